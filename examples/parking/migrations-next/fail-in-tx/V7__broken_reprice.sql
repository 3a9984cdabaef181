-- V7 (broken on purpose): a repricing that does real work and then fails mid-way.
-- It runs in a transaction (Flyway's default on PostgreSQL), so the failure rolls back all of V7:
-- no V7 row in flyway_schema_history, rates unchanged. V6, applied earlier in the same
-- `flyway migrate`, is committed in its own transaction and stays applied.

-- 1) general price rise of 10 % (succeeds, 120 rows)
UPDATE parking_spots
SET hourly_rate_cents = hourly_rate_cents * 110 / 100;

-- 2) "disabled spots become free": violates CHECK parking_spots_rate_ck (hourly_rate_cents > 0)
--    ERROR: new row for relation "parking_spots" violates check constraint "parking_spots_rate_ck"
UPDATE parking_spots
SET hourly_rate_cents = 0
WHERE spot_type = 'disabled';
