-- V4: deterministic seed data (no random(), no now()) so that row counts and checksums of the
-- tables are the same in every database migrated from scratch:
--   25 clients, 75 users (3 per client), 120 spots (3 levels x 4 sections x 10), 300 tickets
--   (290 closed with an amount, 10 open on 10 different spots).
INSERT INTO clients (name, email, phone, created_at)
SELECT format('%s %s',
              (ARRAY['Acme', 'Globex', 'Initech', 'Umbrella', 'Hooli'])[(i - 1) % 5 + 1],
              (ARRAY['Logistics', 'Health', 'Retail', 'Labs', 'Foods'])[(i - 1) / 5 + 1]),
       format('fleet%s@client%s.example', lpad(i::text, 2, '0'), lpad(i::text, 2, '0')),
       format('+1-555-01%s', lpad(i::text, 2, '0')),
       timestamptz '2024-01-01 09:00:00+00' + i * interval '1 day'
FROM generate_series(1, 25) AS i
ORDER BY i;

INSERT INTO users (client_id, username, full_name, role, active, created_at)
SELECT c.id,
       format('c%s.user%s', lpad(c.id::text, 2, '0'), k),
       format('User %s of %s', k, c.name),
       CASE k WHEN 1 THEN 'manager' ELSE 'driver' END,
       NOT (k = 3 AND c.id % 4 = 0),
       c.created_at + k * interval '1 hour'
FROM clients AS c
CROSS JOIN generate_series(1, 3) AS k
ORDER BY c.id, k;

INSERT INTO parking_spots (code, level, section, spot_type, hourly_rate_cents)
SELECT format('L%s-%s-%s', l, s, lpad(n::text, 2, '0')),
       l, s,
       CASE
           WHEN n = 1 THEN 'disabled'
           WHEN n IN (9, 10) THEN 'compact'
           WHEN s = 'D' AND n = 8 THEN 'motorcycle'
           ELSE 'standard'
       END,
       CASE l WHEN 0 THEN 400 WHEN 1 THEN 300 ELSE 250 END
         - CASE WHEN n IN (9, 10) THEN 50 ELSE 0 END
FROM generate_series(0, 2) AS l
CROSS JOIN unnest(ARRAY['A', 'B', 'C', 'D']) AS s
CROSS JOIN generate_series(1, 10) AS n
ORDER BY l, s, n;

-- 300 stays spread over ~10 days; the spot cycles through all 120 spots (7 is coprime with 120),
-- so the 10 open tickets (n > 290) are on 10 different spots.
INSERT INTO tickets (spot_id, client_id, issued_by, plate, entered_at, exited_at, amount_cents)
SELECT g.spot_id,
       g.client_id,
       (SELECT u.id FROM users AS u WHERE u.client_id = g.client_id ORDER BY u.id OFFSET g.n % 3 LIMIT 1),
       g.plate,
       g.entered_at,
       CASE WHEN g.n <= 290 THEN g.entered_at + g.minutes * interval '1 minute' END,
       CASE WHEN g.n <= 290 THEN ceil(g.minutes / 60.0)::integer * s.hourly_rate_cents END
FROM (
    SELECT n,
           (SELECT id FROM parking_spots ORDER BY id OFFSET (n * 7) % 120 LIMIT 1) AS spot_id,
           (SELECT id FROM clients ORDER BY id OFFSET n % 25 LIMIT 1) AS client_id,
           format('%s%s-%s', chr(65 + n % 26), chr(65 + (n / 26) % 26),
                  lpad(((n * 37) % 1000)::text, 3, '0')) AS plate,
           timestamptz '2024-03-01 06:00:00+00' + n * interval '47 minutes' AS entered_at,
           20 + (n * 13) % 300 AS minutes
    FROM generate_series(1, 300) AS n
) AS g
JOIN parking_spots AS s ON s.id = g.spot_id
ORDER BY g.n;
