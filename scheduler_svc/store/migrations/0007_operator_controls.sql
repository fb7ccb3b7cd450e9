-- Migration 0007: operator controls (SPEC §8): job tags, jitter, maintenance windows
-- (paused_until) and alert settings; the run status `cancelled` and each run's due time
-- (due_at: its tick plus the job's jitter); the alerts outbox and the audit trail, both
-- history tables partitioned by day like job_runs; per-tenant webhook signing secrets;
-- the jobs whose last run failed (for job.recovered); an index for searching runs.
--
-- Safe while the previous release (schema 6) runs:
-- - Its statements on jobs name their columns, and it reads jobs through jobs_api,
--   whose columns are fixed: the columns added to jobs change nothing it sees. This
--   release reads jobs through a view of its own, jobs_api_v7.
-- - It reads job_runs with `SELECT *` only outside transactions (GET /runs/{id}, the run
--   list, a manual trigger), where asyncpg prepares a statement again when its row type
--   changes: the column due_at costs it one retry per connection.
-- - It never reads jobs_with_last_run, the view of the release before it: dropped here
--   (contract).
-- - The new constraints are added NOT VALID (no scan under an exclusive lock) and
--   validated in a later step, under a lock that lets writes go on.
-- - The run-search index is made on job_runs alone (ON ONLY: no partition is read); new
--   partitions get it when maintenance attaches them, and the existing ones get it
--   CONCURRENTLY from `scheduler-svc migrate` or maintenance (migrate.complete_indexes),
--   one partition at a time, while writes go on.

-- step: new columns, tables, views and functions
SET LOCAL lock_timeout = '10s';

ALTER TABLE jobs
    ADD COLUMN IF NOT EXISTS tags text[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS jitter_s double precision NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS paused_until timestamptz,
    ADD COLUMN IF NOT EXISTS alerts jsonb;

DO $$
BEGIN
    ALTER TABLE jobs ADD CONSTRAINT jobs_tags_check CHECK (cardinality(tags) <= 20) NOT VALID;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
DO $$
BEGIN
    ALTER TABLE jobs ADD CONSTRAINT jobs_jitter_s_check
        CHECK (jitter_s >= 0 AND jitter_s <= 3600) NOT VALID;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

CREATE INDEX IF NOT EXISTS jobs_tags ON jobs USING gin (tags);
CREATE INDEX IF NOT EXISTS jobs_paused_until ON jobs (paused_until)
    WHERE paused_until IS NOT NULL;

ALTER TABLE job_runs ADD COLUMN IF NOT EXISTS due_at timestamptz;
ALTER TABLE job_runs DROP CONSTRAINT IF EXISTS job_runs_status_check;
ALTER TABLE job_runs ADD CONSTRAINT job_runs_status_check
    CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'skipped', 'cancelled'))
    NOT VALID;

CREATE INDEX IF NOT EXISTS job_runs_search ON ONLY job_runs (tenant, status, id DESC);

CREATE SEQUENCE IF NOT EXISTS alerts_id_seq;
CREATE SEQUENCE IF NOT EXISTS audit_id_seq;

CREATE OR REPLACE FUNCTION history_id(seq regclass, at timestamptz) RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE AS $$
    SELECT greatest(floor(extract(epoch FROM at) / 86400)::bigint - 10957, 1) << 37
           | (nextval(seq) & 137438953471)
$$;

-- Whether a job with these alert settings (jobs.alerts) is alerted on `event` ("failed",
-- "recovered" or "missed"), given whether the operator set SCHEDULER_ALERT_URL: a job
-- without settings is alerted on everything there; one with settings, on its `on` list,
-- at its own url or else there.
CREATE OR REPLACE FUNCTION alert_wanted(alerts jsonb, event text, operator_url boolean) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN alerts IS NULL THEN operator_url
                ELSE (alerts ? 'url' OR operator_url)
                     AND coalesce(alerts -> 'on', '["failed", "recovered", "missed"]') ? event
           END
$$;

-- How long after its due time a tick without a succeeded run is missed: the job's
-- alerts.missed_after_s, by default 60 s more than its timeout.
CREATE OR REPLACE FUNCTION alert_missed_after(alerts jsonb, timeout_s integer) RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT make_interval(secs => coalesce((alerts ->> 'missed_after_s')::float8, 60 + timeout_s))
$$;

CREATE TABLE IF NOT EXISTS alerts (
    id              bigint NOT NULL,
    tenant          text NOT NULL,
    job_id          bigint NOT NULL,
    job_name        text NOT NULL,
    run_id          bigint,
    event           text NOT NULL CONSTRAINT alerts_event_check
                    CHECK (event IN ('run.failed', 'job.recovered', 'job.missed')),
    scheduled_for   timestamptz NOT NULL,
    url             text,
    body            jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CONSTRAINT alerts_status_check
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
) PARTITION BY RANGE (scheduled_for);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_once ON alerts (job_id, scheduled_for, event);
CREATE INDEX IF NOT EXISTS alerts_due ON alerts (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS alerts_tenant ON alerts (tenant, id DESC);
CREATE TABLE IF NOT EXISTS alerts_default PARTITION OF alerts DEFAULT;
DO $$
BEGIN
    ALTER TABLE alerts_default ADD PRIMARY KEY (id);
EXCEPTION WHEN invalid_table_definition THEN NULL;
END $$;

CREATE TABLE IF NOT EXISTS audit (
    id         bigint NOT NULL DEFAULT history_id('audit_id_seq', now()),
    at         timestamptz NOT NULL DEFAULT now(),
    tenant     text NOT NULL,
    actor      text NOT NULL,
    action     text NOT NULL CONSTRAINT audit_action_check
               CHECK (action IN ('job.create', 'job.update', 'job.replace', 'job.pause',
                                 'job.resume', 'job.trigger', 'job.delete', 'run.cancel')),
    job_id     bigint,
    run_id     bigint,
    changes    jsonb NOT NULL DEFAULT '{}',
    request_id text
) PARTITION BY RANGE (at);
CREATE INDEX IF NOT EXISTS audit_tenant ON audit (tenant, id DESC);
CREATE INDEX IF NOT EXISTS audit_job ON audit (job_id, id DESC);
CREATE TABLE IF NOT EXISTS audit_default PARTITION OF audit DEFAULT;
DO $$
BEGIN
    ALTER TABLE audit_default ADD PRIMARY KEY (id);
EXCEPTION WHEN invalid_table_definition THEN NULL;
END $$;

INSERT INTO history_tables (name, partition_options, keep_while)
VALUES ('alerts', '', 'status = ''pending'''), ('audit', '', 'false')
ON CONFLICT (name) DO NOTHING;
SELECT history_partitions_create(7);

CREATE TABLE IF NOT EXISTS tenant_secrets (
    tenant     text PRIMARY KEY,
    secret     text NOT NULL,
    previous   text,
    created_at timestamptz NOT NULL DEFAULT now(),
    rotated_at timestamptz
);

CREATE TABLE IF NOT EXISTS jobs_failing (
    job_id bigint PRIMARY KEY
           CONSTRAINT jobs_failing_job_id_fkey REFERENCES jobs (id) ON DELETE CASCADE,
    since  timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE VIEW jobs_api_v7 AS
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

DROP VIEW IF EXISTS jobs_with_last_run;

-- step: validate the new constraints (SHARE UPDATE EXCLUSIVE: writes go on)
ALTER TABLE jobs VALIDATE CONSTRAINT jobs_tags_check;
ALTER TABLE jobs VALIDATE CONSTRAINT jobs_jitter_s_check;
ALTER TABLE job_runs VALIDATE CONSTRAINT job_runs_status_check;
UPDATE schema_version SET version = 7, applied_at = now() WHERE version < 7;
