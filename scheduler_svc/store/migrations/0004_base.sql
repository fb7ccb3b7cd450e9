-- Migration 0004: the schema as releases before versioned migrations kept it (schema
-- versions 1 to 4, schema.sql applied whole on every start). Every statement is
-- idempotent, so it brings an empty database, or one of any of those versions, to
-- version 4; the migrations after it start from there. Never edit it: the migration
-- runner records its checksum.

-- One row: the schema version this file brings the database to. /readyz
-- compares it with the version the running code expects.
CREATE TABLE IF NOT EXISTS schema_version (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version    integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Every job belongs to a tenant; every query filters on it.
    tenant           text NOT NULL,
    name             text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    attributes       jsonb NOT NULL DEFAULT '{}',
    -- The schedule text as the client sent it: cron, macro, '@every …' or '@at …'.
    schedule         text NOT NULL,
    timezone         text NOT NULL DEFAULT 'UTC',
    target           jsonb NOT NULL DEFAULT '{"type": "log"}',
    max_attempts     integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 100),
    backoff_s        double precision NOT NULL DEFAULT 10 CHECK (backoff_s >= 0),
    backoff_max_s    double precision NOT NULL DEFAULT 3600 CHECK (backoff_max_s >= 0),
    timeout_s        integer NOT NULL DEFAULT 30 CHECK (timeout_s BETWEEN 1 AND 86400),
    -- What to do with ticks that were due while no replica ran:
    --   run_once: run the latest missed tick once; skip: run none; run_all: run each (≤ 100).
    misfire_policy   text NOT NULL DEFAULT 'run_once'
                     CHECK (misfire_policy IN ('run_once', 'skip', 'run_all')),
    misfire_grace_s  integer NOT NULL DEFAULT 60 CHECK (misfire_grace_s >= 0),
    -- forbid: a tick due while an earlier run is pending or running is recorded as skipped;
    -- allow: runs may overlap.
    overlap          text NOT NULL DEFAULT 'forbid' CHECK (overlap IN ('forbid', 'allow')),
    -- active: ticks fire; paused: no ticks until resumed; completed: the schedule has
    -- no further fire time (a fired '@at').
    status           text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'paused', 'completed')),
    -- The next tick, NULL when paused or completed. The scheduler claims by it.
    next_run_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- Bumped by every change; sent as the ETag, checked against If-Match.
    version          integer NOT NULL DEFAULT 1,
    -- Idempotency-Key of the POST that created the job, and a hash of its body,
    -- so a repeat returns this job and a different body under the same key is a 409.
    idempotency_key  text,
    request_hash     text
);

-- One job per tenant and Idempotency-Key. Partial: most jobs have no key, and every
-- tick rewrites its job's row (next_run_at), which costs one entry per index.
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_idempotency_key;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_key ON jobs (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The scheduler's claim: due, active jobs in order of due time. Partial, so its size
-- follows the active jobs only.
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (next_run_at) WHERE status = 'active';
-- Listing newest first, per tenant, by keyset on id.
CREATE INDEX IF NOT EXISTS jobs_tenant_id ON jobs (tenant, id DESC);

CREATE TABLE IF NOT EXISTS job_runs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id           bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    tenant           text NOT NULL,
    -- The tick this run is for (for a manual trigger, the moment it was triggered).
    scheduled_for    timestamptz NOT NULL,
    -- schedule: materialized from the job's schedule; manual: POST /jobs/{id}/trigger.
    trigger          text NOT NULL DEFAULT 'schedule' CHECK (trigger IN ('schedule', 'manual')),
    -- pending: waiting for an executor (or for its next attempt, or, with next_attempt_at
    -- NULL, for an earlier run of its job to end); running: leased by
    -- `worker` until `lease_expires_at`; succeeded / failed: final; skipped: final,
    -- never executed (overlap forbidden), `error` says why.
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'skipped')),
    attempt          integer NOT NULL DEFAULT 0,
    -- When the next attempt is due; NULL while the run waits for an earlier run of its
    -- job to end (overlap forbid, see waits_for): executors never claim it then.
    next_attempt_at  timestamptz DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    duration_ms      double precision,
    error            text,
    output           jsonb,
    worker           text,
    -- Set exactly while the run is running: its lease.
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- When the run became claimable (its insert, or the end of its wait): from then until
    -- finished_at it was pending or running, which is what overlap forbid judges a later
    -- tick by. NULL while it waits.
    ready_at         timestamptz DEFAULT now(),
    -- A waiting run (next_attempt_at NULL): the earlier run of its job whose outcome
    -- decides it (NULL: it waits behind other waiting runs or a run of its own pass).
    waits_for        bigint,
    -- A tick run late: after the next tick of its job had come due, or behind earlier
    -- runs it waited for (a backlog after an outage). Ticks that come due while it runs
    -- wait their turn instead of being skipped as overlaps (within the misfire grace).
    catch_up         boolean NOT NULL DEFAULT false,
    CONSTRAINT job_runs_leased_while_running
        CHECK ((status = 'running') = (lease_expires_at IS NOT NULL))
);

-- One run per (job, tick): a second materialization of the same tick, by any
-- replica, conflicts here and is dropped. Manual triggers are outside the schedule.
CREATE UNIQUE INDEX IF NOT EXISTS job_runs_one_per_tick
    ON job_runs (job_id, scheduled_for) WHERE trigger = 'schedule';
-- Executors claim pending runs by due time.
CREATE INDEX IF NOT EXISTS job_runs_pending ON job_runs (next_attempt_at) WHERE status = 'pending';
-- Lease takeover: running runs whose lease has expired. Keyed on the lease alone
-- (set exactly while running, by the CHECK above) so that queries about leases can
-- only use this index, never the larger job_runs_active, whatever the statistics say.
DROP INDEX IF EXISTS job_runs_leases;
CREATE INDEX IF NOT EXISTS job_runs_leased ON job_runs (lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;
-- A job's history, newest first.
CREATE INDEX IF NOT EXISTS job_runs_job_id ON job_runs (job_id, id DESC);
-- Retention pruning by age. BRIN: runs are appended in created_at order, so a few
-- bytes per block range find the old ones, and writing a run costs it next to nothing.
DROP INDEX IF EXISTS job_runs_created_at;
CREATE INDEX IF NOT EXISTS job_runs_created_brin ON job_runs USING brin (created_at);
-- Overlap check: does a job have a run waiting or under way?
CREATE INDEX IF NOT EXISTS job_runs_active ON job_runs (job_id)
    WHERE status IN ('pending', 'running');

-- job_runs is a queue: most of its rows change state within seconds. Analyze and
-- vacuum it after a small share of changes, so that plans follow how many runs are
-- pending or running and dead row versions do not pile up between passes.
ALTER TABLE job_runs SET (autovacuum_analyze_scale_factor = 0.02,
                          autovacuum_vacuum_scale_factor = 0.05);

-- Overlap by real time (schema 4): a tick that came due while an earlier run was still
-- running by the database's record waits (next_attempt_at NULL) until that run's outcome
-- is recorded with the time it really finished; it is then skipped or run. finished_at
-- is that time as the replica measured it, not when the result reached the database.
ALTER TABLE job_runs ALTER COLUMN next_attempt_at DROP NOT NULL;
ALTER TABLE job_runs ADD COLUMN IF NOT EXISTS ready_at timestamptz DEFAULT now();
ALTER TABLE job_runs ADD COLUMN IF NOT EXISTS waits_for bigint;
ALTER TABLE job_runs ADD COLUMN IF NOT EXISTS catch_up boolean NOT NULL DEFAULT false;
-- The waiting runs of a job, in tick order. Partial: empty but after an outage or while
-- a long run of an overlap-forbidding job holds up its next ticks.
CREATE INDEX IF NOT EXISTS job_runs_waiting ON job_runs (job_id, scheduled_for)
    WHERE status = 'pending' AND next_attempt_at IS NULL;

-- A job's last run is derived from its runs, not stored on the job: executors never
-- write job rows, so they never contend with the scheduler's locks on them.
ALTER TABLE jobs DROP COLUMN IF EXISTS last_run_at, DROP COLUMN IF EXISTS last_run_status;

-- Jobs as the API shows them: with the start and status of their latest started run.
CREATE OR REPLACE VIEW jobs_with_last_run AS
SELECT j.*, last_run.started_at AS last_run_at, last_run.status AS last_run_status
FROM jobs j
LEFT JOIN LATERAL (
    SELECT r.started_at, r.status
    FROM job_runs r
    WHERE r.job_id = j.id AND r.started_at IS NOT NULL
    ORDER BY r.id DESC
    LIMIT 1
) last_run ON true;

-- Wake-ups. Every replica LISTENs on these channels: scheduler_jobs when jobs are
-- created or changed (so a new earliest due time is seen at once), scheduler_runs
-- when runs are inserted (so executors claim at once). A notification only saves
-- waiting: every loop also wakes on its own timer, so a lost one delays, never loses.
-- The scheduler's own advancing of next_run_at tells no one: the other replicas'
-- timers already cover it; nor do runs it inserts already finished: no executor has
-- anything to do for them. A handshake with queries.sql's runs_materialize, the
-- scheduler pass's statement: it sets the transaction-local settings
-- scheduler.advancing and scheduler.runs_quiet that this function reads.
CREATE OR REPLACE FUNCTION scheduler_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    quiet_when text := CASE TG_ARGV[0] WHEN 'scheduler_jobs' THEN 'scheduler.advancing'
                                       ELSE 'scheduler.runs_quiet' END;
BEGIN
    IF coalesce(current_setting(quiet_when, true), '') <> 'on' THEN
        PERFORM pg_notify(TG_ARGV[0], '');
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER jobs_changed
    AFTER INSERT OR UPDATE OR DELETE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler_notify('scheduler_jobs');
CREATE OR REPLACE TRIGGER job_runs_inserted
    AFTER INSERT ON job_runs
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler_notify('scheduler_runs');

CREATE TABLE IF NOT EXISTS api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The visible start of the key, to name it in lists and logs.
    prefix       text NOT NULL UNIQUE,
    -- SHA-256 of the whole key; the key itself is never stored.
    key_hash     bytea NOT NULL UNIQUE,
    tenant       text NOT NULL,
    scopes       text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

INSERT INTO schema_version (version) VALUES (4)
ON CONFLICT (singleton) DO UPDATE SET version = excluded.version, applied_at = now()
WHERE schema_version.version < excluded.version;
