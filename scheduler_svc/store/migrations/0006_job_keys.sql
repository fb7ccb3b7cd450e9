-- Migration 0006: job keys ("jobs as code"): a job's key, the client's own name for it,
-- unique per tenant (PUT /jobs/by-key/{key}), and its managed_by, which tool owns it.
--
-- They live in a table of their own, job_keys, and this release reads jobs through a view
-- of its own, jobs_api: `jobs` and `jobs_with_last_run` stay exactly as the previous
-- release knows them. A column added to either would change the row type of that
-- release's `SELECT *` and `RETURNING *` statements on them, and asyncpg cannot prepare
-- such a statement again inside a transaction (InvalidCachedStatementError): its PATCH,
-- pause, resume and create with an Idempotency-Key would answer 500 after the migration.
-- It never names job_keys or jobs_api; deleting a job deletes its keys (ON DELETE
-- CASCADE), and a job it creates has none (no row). jobs_with_last_run goes in a later
-- release (contract), once no replica of the previous one runs.
--
-- One step, a few milliseconds: job_keys is new and empty, so its indexes cost nothing
-- to build and its foreign key nothing to check. The foreign key takes a SHARE ROW
-- EXCLUSIVE lock on jobs (it adds its triggers there) until the step commits: writes to
-- jobs wait that long, reads go on.

-- step: job_keys, the view jobs_api, and the version
SET LOCAL lock_timeout = '10s';
CREATE TABLE IF NOT EXISTS job_keys (
    job_id     bigint PRIMARY KEY
               CONSTRAINT job_keys_job_id_fkey REFERENCES jobs (id) ON DELETE CASCADE,
    tenant     text NOT NULL,
    key        text CONSTRAINT job_keys_key_check
               CHECK (key ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}$'),
    managed_by text CONSTRAINT job_keys_managed_by_check
               CHECK (char_length(managed_by) BETWEEN 1 AND 200),
    CONSTRAINT job_keys_key_or_owner CHECK (key IS NOT NULL OR managed_by IS NOT NULL)
);
CREATE UNIQUE INDEX IF NOT EXISTS job_keys_key ON job_keys (tenant, key)
    WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS job_keys_managed_by ON job_keys (tenant, managed_by)
    WHERE managed_by IS NOT NULL;

CREATE OR REPLACE VIEW jobs_api AS
SELECT j.*, k.key, k.managed_by,
       last_run.started_at AS last_run_at, last_run.status AS last_run_status
FROM jobs j
LEFT JOIN job_keys k ON k.job_id = j.id AND k.tenant = j.tenant
LEFT JOIN LATERAL (
    SELECT r.started_at, r.status
    FROM job_runs r
    WHERE r.job_id = j.id AND r.started_at IS NOT NULL
    ORDER BY r.id DESC
    LIMIT 1
) last_run ON true;

UPDATE schema_version SET version = 6, applied_at = now() WHERE version < 6;
