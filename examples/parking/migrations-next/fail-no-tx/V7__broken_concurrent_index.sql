-- V7 (broken on purpose): index builds that must run outside a transaction
-- (CREATE INDEX CONCURRENTLY), hence V7__broken_concurrent_index.sql.conf sets
-- executeInTransaction=false. The first index is built and stays (nothing can roll it back);
-- the second names a column that does not exist and fails:
--   ERROR: column "exit_time" does not exist
-- Flyway then records V7 in flyway_schema_history with success = false, and every later
-- migrate/validate fails ("Detected failed migration to version 7") until `flyway repair`
-- removes that row. Re-running V7 after the repair fails again on the first statement
-- (relation "tickets_entered_at_idx" already exists) unless the script is fixed - the typical
-- half-applied non-transactional migration that needs a human (or an operator) to sort out.
CREATE INDEX CONCURRENTLY tickets_entered_at_idx ON tickets (entered_at);

CREATE INDEX CONCURRENTLY tickets_exited_at_idx ON tickets (exit_time);
