-- V5: EV charging points were installed on level 0, sections A and B. The app filters on it,
-- so it gets a NOT NULL column with a default (a metadata-only change on PostgreSQL 11+),
-- a backfill, and a partial index for the "free EV spot" lookup.
ALTER TABLE parking_spots ADD COLUMN ev_charging boolean NOT NULL DEFAULT false;

UPDATE parking_spots
SET ev_charging = true
WHERE level = 0 AND section IN ('A', 'B') AND spot_type = 'standard';

CREATE INDEX parking_spots_ev_charging_idx ON parking_spots (level, section) WHERE ev_charging;

COMMENT ON COLUMN parking_spots.ev_charging IS 'spot has an EV charging point (since V5)';
