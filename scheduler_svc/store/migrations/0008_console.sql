-- Migration 0008: the operator console (SPEC §9): the key that signs its session
-- cookies, the per-minute rollup its overview reads, and the notifications that keep
-- its pages live.
--
-- Safe while the previous release (schema 7) runs: two new tables it never reads, and
-- statement triggers that only send notifications on a channel it does not listen to.

-- step: console tables and live notifications
SET LOCAL lock_timeout = '10s';

-- The console's session cookies are signed with this key, kept here so that every
-- replica verifies every other's cookies (console/access.py). One row, made by the first
-- replica that needs it; deleting it signs everyone out.
CREATE TABLE IF NOT EXISTS console_keys (
    name       text PRIMARY KEY,
    secret     bytea NOT NULL CONSTRAINT console_keys_secret_check CHECK (length(secret) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- What the console's overview charts (engine/rollup.py): per tenant, minute and
-- replica, the runs that ended by outcome and a histogram of first attempts' fire lag.
-- Each replica adds its own counts every few seconds, so no two replicas write one row
-- and the overview reads at most (minutes × replicas) rows instead of the runs.
-- Maintenance deletes the rows older than a day.
CREATE TABLE IF NOT EXISTS run_minutes (
    tenant    text NOT NULL,
    minute    timestamptz NOT NULL,
    worker    text NOT NULL,
    succeeded integer NOT NULL DEFAULT 0,
    failed    integer NOT NULL DEFAULT 0,
    skipped   integer NOT NULL DEFAULT 0,
    cancelled integer NOT NULL DEFAULT 0,
    -- attempts that failed and are to be tried again
    retried   integer NOT NULL DEFAULT 0,
    -- counts of first attempts' fire lag by bucket, models/stats.py's LAG_BUCKETS_MS
    lag_counts integer[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant, minute, worker)
);

-- The console's jobs list filters by name, as GET /jobs and the bulk calls do.
CREATE INDEX IF NOT EXISTS jobs_tenant_name ON jobs (tenant, name);

-- Live consoles (console/live.py) hear of changes on the channel scheduler_console, as
-- {"t": tenant, "j": [job ids, at most 50] or null (more)}, so that a stream refreshes
-- only the pages they show. Changes to jobs by anyone but the scheduler (the API, the
-- console, maintenance windows) are told by these statement triggers, once per statement
-- and tenant. The engine's own changes, a job advanced and its runs inserted, leased,
-- recorded or settled, are told by each replica in a batch every quarter second
-- (engine/rollup.py), never by a trigger on job_runs: a transition-table trigger there
-- made every write of a run dearer, and at 3,000 webhook ticks a second the database no
-- longer kept up. The scheduler's advance of its jobs (scheduler.advancing on, the
-- handshake scheduler_notify() reads too) is left to those batches likewise.
CREATE OR REPLACE FUNCTION console_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('scheduler_console', json_build_object(
                't', tenant,
                'j', CASE WHEN count(*) <= 50 THEN array_agg(id ORDER BY id) END)::text)
    FROM changed GROUP BY tenant;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER jobs_console_inserted
    AFTER INSERT ON jobs REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION console_notify();
CREATE OR REPLACE TRIGGER jobs_console_updated
    AFTER UPDATE ON jobs REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT
    WHEN (current_setting('scheduler.advancing', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION console_notify();
CREATE OR REPLACE TRIGGER jobs_console_deleted
    AFTER DELETE ON jobs REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION console_notify();

UPDATE schema_version SET version = 8, applied_at = now() WHERE version < 8;
