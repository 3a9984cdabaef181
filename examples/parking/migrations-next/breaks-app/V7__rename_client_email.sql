-- V7 (broken release): renames clients.email to contact_email. The SQL is fine and Flyway records success, but
-- the running api-gateway still reads clients.email, so its health check fails schema validation and the
-- Deployment never becomes available again: the runbook's step 12 (app functionality) is what catches it.
ALTER TABLE clients RENAME COLUMN email TO contact_email;
