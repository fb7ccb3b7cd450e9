-- scheduler-svc schema: the whole of it, as of the last migration. `scheduler-svc
-- migrate` (and every start) creates an empty database from this file and records every
-- migration as applied; a database that has a schema gets the migrations it lacks
-- instead (scheduler_svc/store/migrations/). tests/test_migrations.py checks that both
-- ways end in the same catalog.

-- One row: the schema version, the number of the last migration applied. /readyz
-- compares it with the version the running code expects. Releases before versioned
-- migrations read it too.
CREATE TABLE schema_version (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version    integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
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
    request_hash     text,
    -- Labels to find jobs by (GET /jobs?tag=, bulk pause): at most 20, each matching
    -- [a-z0-9][a-z0-9_.:-]{0,62} (the API checks the pattern).
    tags             text[] NOT NULL DEFAULT '{}' CONSTRAINT jobs_tags_check
                     CHECK (cardinality(tags) <= 20),
    -- Each tick's run is due this many seconds after it at most: an offset in
    -- [0, jitter_s) that is a fixed function of (job, tick) (schedule/jitter.py).
    jitter_s         double precision NOT NULL DEFAULT 0 CONSTRAINT jobs_jitter_s_check
                     CHECK (jitter_s >= 0 AND jitter_s <= 3600),
    -- The end of a maintenance window: a paused job resumes by itself then (the
    -- scheduler), as POST /jobs/{id}/resume would. NULL: paused until resumed.
    paused_until     timestamptz,
    -- Where and on what to alert ({"url"?, "on", "missed_after_s"?}); NULL: every event
    -- to SCHEDULER_ALERT_URL, if the operator set one.
    alerts           jsonb
);

-- One job per tenant and Idempotency-Key. Partial: most jobs have no key, and every
-- tick rewrites its job's row (next_run_at), which costs one entry per index.
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The scheduler's claim: due, active jobs in order of due time. Partial, so its size
-- follows the active jobs only.
CREATE INDEX jobs_due ON jobs (next_run_at) WHERE status = 'active';
-- Listing newest first, per tenant, by keyset on id.
CREATE INDEX jobs_tenant_id ON jobs (tenant, id DESC);
-- GET /jobs?tag=a&tag=b and bulk pause by tag: jobs having all of them (tags @> …).
CREATE INDEX jobs_tags ON jobs USING gin (tags);
-- Maintenance windows that end: the scheduler resumes the jobs whose window is over.
CREATE INDEX jobs_paused_until ON jobs (paused_until) WHERE paused_until IS NOT NULL;

-- A job's key, the client's own name for it ("jobs as code": PUT /jobs/by-key/{key}),
-- unique per tenant, and its managed_by, which tool owns it (`scheduler-svc apply
-- --owner`). A row only for a job that has either: a job without is not here. Not columns
-- of jobs: a column added there changes the row type of the `SELECT *` statements of the
-- release before keys, which then fail inside a transaction while it still runs
-- (migrations/0006_job_keys.sql). `tenant` is the job's, copied by the statement that
-- writes the row (queries.sql), so that the key is unique per tenant by an index. The
-- API refuses some keys the check allows (an empty, "." or ".." segment between
-- slashes, which a URL path cannot carry).
CREATE TABLE job_keys (
    job_id     bigint PRIMARY KEY
               CONSTRAINT job_keys_job_id_fkey REFERENCES jobs (id) ON DELETE CASCADE,
    tenant     text NOT NULL,
    key        text CONSTRAINT job_keys_key_check
               CHECK (key ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}$'),
    managed_by text CONSTRAINT job_keys_managed_by_check
               CHECK (char_length(managed_by) BETWEEN 1 AND 200),
    CONSTRAINT job_keys_key_or_owner CHECK (key IS NOT NULL OR managed_by IS NOT NULL)
);

-- One job per tenant and key, and finding it by key.
CREATE UNIQUE INDEX job_keys_key ON job_keys (tenant, key) WHERE key IS NOT NULL;
-- Listing the jobs a tool owns (GET /jobs?managed_by=…, what apply reads).
CREATE INDEX job_keys_managed_by ON job_keys (tenant, managed_by)
    WHERE managed_by IS NOT NULL;

-- Which migrations the database has had (scheduler_svc/store/migrations/NNNN_name.sql),
-- each with the SHA-256 of its file: a migration changed after it was applied is
-- refused, not silently skipped.
CREATE TABLE schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms double precision
);

-- Run ids tell the day of their run's tick, so that a run is found in one partition of
-- job_runs: id = (UTC days since 2000-01-01 of scheduled_for) << 37 | a sequence number.
-- 16 bits of days (to the year 2179) and 37 of sequence (137 billion runs a day) stay
-- below 2^53, so JavaScript clients read every id exactly. Day 0 is never used: the
-- ids of runs recorded before runs were partitioned (migration 0005) are small numbers,
-- which say nothing of their day.
CREATE SEQUENCE job_runs_id_seq;

CREATE FUNCTION run_id(tick timestamptz) RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE AS $$
    SELECT greatest(floor(extract(epoch FROM tick) / 86400)::bigint - 10957, 1) << 37
           | (nextval('job_runs_id_seq') & 137438953471)
$$;

-- Where the tick of run `id` lies: [run_id_day_start, run_id_day_end). Unbounded for ids
-- of day 0 and 1 (runs from before migration 0005, and ticks before 2000-01-02).
-- Immutable, so that a statement that looks runs up by id prunes job_runs to the
-- partition of their day before it reads anything.
CREATE FUNCTION run_id_day_start(id bigint) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN id >> 37 <= 1 THEN '-infinity'::timestamptz
                ELSE to_timestamp(((10957 + (id >> 37)) * 86400)::float8) END
$$;

CREATE FUNCTION run_id_day_end(id bigint) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN id >> 37 = 0 THEN 'infinity'::timestamptz
                ELSE to_timestamp(((10957 + (id >> 37) + 1) * 86400)::float8) END
$$;

-- The day of run ids below `cursor`'s, counting as run ids do: the cursor's day, or today
-- (UTC) without a cursor. Stable and a single expression, so that PostgreSQL inlines it
-- and a window of days from it still leaves out the partitions it cannot touch.
CREATE FUNCTION run_id_cursor_day(cursor bigint) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(cursor >> 37, floor(extract(epoch FROM now()) / 86400)::bigint - 10957)
$$;

-- The same bounds for a set of run ids: from the first day's start to the last day's end.
-- They hold a query, so PostgreSQL cannot inline them: in a WHERE clause they run once
-- per row read. A statement given its run ids takes the bounds as parameters instead,
-- from store/history_ids.py's days_of_ids, which reckons them the same way; one that
-- picks its ids itself reckons them once, in a scalar subquery.
CREATE FUNCTION run_ids_day_start(ids bigint[]) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT min(run_id_day_start(id)) FROM unnest(ids) AS id
$$;

CREATE FUNCTION run_ids_day_end(ids bigint[]) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT max(run_id_day_end(id)) FROM unnest(ids) AS id
$$;

-- Run history, partitioned by the day of the tick (scheduled_for): a day's runs are one
-- table, and retention drops it whole instead of deleting rows one by one. The
-- partitions are job_runs_YYYYMMDD, created a week ahead by maintenance (history_tables
-- below), and job_runs_default, which takes a run whose day has no partition (one whose
-- tick is older than the retention, or one written while maintenance had not run for a
-- week), so that no write ever fails for lack of one. A database upgraded from before
-- partitioning also has job_runs_before_v5: the runs it had then, up to the day after
-- the upgrade.
CREATE TABLE job_runs (
    -- run_id(scheduled_for): the statements that insert runs set it, and for one that
    -- does not (a release before partitioning, during a rolling upgrade) the trigger
    -- job_runs_id does.
    id               bigint NOT NULL,
    job_id           bigint NOT NULL
                     CONSTRAINT job_runs_job_id_fkey REFERENCES jobs (id) ON DELETE CASCADE,
    tenant           text NOT NULL,
    -- The tick this run is for (for a manual trigger, the moment it was triggered).
    scheduled_for    timestamptz NOT NULL,
    -- schedule: materialized from the job's schedule; manual: POST /jobs/{id}/trigger.
    trigger          text NOT NULL DEFAULT 'schedule'
                     CONSTRAINT job_runs_trigger_check CHECK (trigger IN ('schedule', 'manual')),
    -- pending: waiting for an executor (or for its next attempt, or, with next_attempt_at
    -- NULL, for an earlier run of its job to end); running: leased by
    -- `worker` until `lease_expires_at`; succeeded / failed: final; skipped: final,
    -- never executed (overlap forbidden), `error` says why; cancelled: final, by
    -- POST /runs/{id}/cancel (an attempt under way is stopped, its result dropped).
    status           text NOT NULL DEFAULT 'pending' CONSTRAINT job_runs_status_check
                     CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'skipped',
                                       'cancelled')),
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
    -- When the tick's run is due: the tick plus its job's jitter (NULL: the tick itself,
    -- as for every run from before jitter). Its first attempt is due then, fire lag is
    -- measured from it and overlap judged at it.
    due_at           timestamptz,
    CONSTRAINT job_runs_leased_while_running
        CHECK ((status = 'running') = (lease_expires_at IS NOT NULL))
) PARTITION BY RANGE (scheduled_for);

-- Each partition's primary key is its own (id): a key of the partitioned table would
-- have to include scheduled_for. Ids are unique all the same: one sequence numbers them.
--
-- One run per (job, tick): a second materialization of the same tick, by any
-- replica, conflicts here and is dropped. Manual triggers are outside the schedule.
-- (It includes the partition key, so it holds across partitions.)
CREATE UNIQUE INDEX job_runs_one_per_tick
    ON job_runs (job_id, scheduled_for) WHERE trigger = 'schedule';
-- Executors claim pending runs by due time.
CREATE INDEX job_runs_pending ON job_runs (next_attempt_at) WHERE status = 'pending';
-- Lease takeover: running runs whose lease has expired. Keyed on the lease alone
-- (set exactly while running, by the CHECK above) so that queries about leases can
-- only use this index, never the larger job_runs_active, whatever the statistics say.
CREATE INDEX job_runs_leased ON job_runs (lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;
-- A job's history, newest first.
CREATE INDEX job_runs_job_id ON job_runs (job_id, id DESC);
-- Overlap check: does a job have a run waiting or under way?
CREATE INDEX job_runs_active ON job_runs (job_id)
    WHERE status IN ('pending', 'running');
-- The waiting runs of a job, in tick order. Partial: empty but after an outage or while
-- a long run of an overlap-forbidding job holds up its next ticks.
CREATE INDEX job_runs_waiting ON job_runs (job_id, scheduled_for)
    WHERE status = 'pending' AND next_attempt_at IS NULL;
-- Run search (GET /runs): a tenant's runs newest first, of one status (the console's
-- failures page) or, merged status by status, of any.
CREATE INDEX job_runs_search ON job_runs (tenant, status, id DESC);

CREATE FUNCTION job_runs_assign_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.id := run_id(NEW.scheduled_for);
    RETURN NEW;
END
$$;

-- Only for inserts that leave the id out: a row trigger's call costs, and the statements
-- of this release pass run_id(scheduled_for) themselves.
CREATE TRIGGER job_runs_id
    BEFORE INSERT ON job_runs
    FOR EACH ROW WHEN (NEW.id IS NULL) EXECUTE FUNCTION job_runs_assign_id();

CREATE TABLE job_runs_default PARTITION OF job_runs DEFAULT;
ALTER TABLE job_runs_default ADD PRIMARY KEY (id);

-- Where unfinished runs can be: every pending or running run's tick (scheduled_for) is at
-- or after `since`. The statements that look for unfinished runs (the due claim's
-- overlap probe, the executor's exchange) run as generic plans, which set up a scan of
-- every partition of job_runs that nothing prunes, and with a month of history most of
-- those hold only finished runs. Given a replica's last reading of `since` as a
-- parameter, they prune job_runs to the days since before they execute; each returns
-- the value its snapshot holds, and a replica whose reading was too high looks again
-- (store/unfinished.py). Kept true by both sides of one row lock:
--   - job_runs_below_floor: a run inserted unfinished for a tick more than a day before
--     its transaction began (a backlog after a long outage, a one-off in the past)
--     lowers `since`, and holds the row until it commits;
--   - maintenance raises `since` (unfinished_floor_raise) to the oldest unfinished tick
--     before the start of the day before yesterday (UTC), or to that start, holding the
--     row while it looks, so that it never passes over a run being inserted below it.
--     An insert the trigger leaves alone is for a tick at most a day before its
--     transaction began, never below the floor if that transaction is younger than a day.
CREATE TABLE unfinished_runs_floor (
    one   boolean PRIMARY KEY DEFAULT true CONSTRAINT unfinished_runs_floor_one CHECK (one),
    since timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO unfinished_runs_floor DEFAULT VALUES;

CREATE FUNCTION unfinished_runs_floor_lower() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE unfinished_runs_floor SET since = least(since, NEW.scheduled_for);
    RETURN NEW;
END
$$;

-- Only for an old tick: the WHEN is evaluated per row without calling the function.
CREATE TRIGGER job_runs_below_floor
    BEFORE INSERT ON job_runs
    FOR EACH ROW
    WHEN (NEW.status IN ('pending', 'running') AND NEW.scheduled_for < now() - interval '1 day')
    EXECUTE FUNCTION unfinished_runs_floor_lower();

-- History tables: tables partitioned by range on one timestamptz column, a partition a
-- UTC day, that maintenance keeps (history_partitions_create, history_partitions_detach).
-- A table joins with a row here, in the migration that creates it.
CREATE TABLE history_tables (
    name              text PRIMARY KEY,
    -- Storage parameters every new partition gets (the partitioned table has none).
    partition_options text NOT NULL DEFAULT '',
    -- A condition on rows: a partition past the retention in which a row meets it is
    -- kept (and retried at the next pass) rather than dropped.
    keep_while        text NOT NULL DEFAULT 'false'
);

-- job_runs is a queue: most of its rows change state within seconds. Analyze and
-- vacuum its partitions after a small share of changes, so that plans follow how many
-- runs are pending or running and dead row versions do not pile up between passes.
INSERT INTO history_tables (name, partition_options, keep_while) VALUES (
    'job_runs',
    'WITH (autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_scale_factor = 0.05)',
    'status IN (''pending'', ''running'')'
);

-- The partitions of history table `parent` with their bounds ('-infinity' for MINVALUE,
-- 'infinity' for MAXVALUE; NULL for the default partition).
CREATE FUNCTION history_partitions(parent text)
RETURNS TABLE (partition text, lower_bound timestamptz, upper_bound timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT c.relname::text,
           CASE WHEN b.m[1] = 'MINVALUE' THEN '-infinity' ELSE btrim(b.m[1], '''')::timestamptz END,
           CASE WHEN b.m[2] = 'MAXVALUE' THEN 'infinity' ELSE btrim(b.m[2], '''')::timestamptz END
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL (
        SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \((.+)\) TO \((.+)\)') AS m
    ) b
    WHERE i.inhparent = parent::regclass
$$;

-- Create the missing day partitions of every history table from `days_back` days ago
-- to `days_ahead` days ahead (UTC days); return how many were made. A new partition is filled and
-- attached, not created in place: rows of its day that went to the default partition
-- move into it first, and attaching locks the parent less than CREATE … PARTITION OF.
CREATE FUNCTION history_partitions_create(days_ahead integer, days_back integer DEFAULT 0)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    t history_tables;
    key text;
    day date;
    lo timestamptz;
    hi timestamptz;
    part text;
    made integer := 0;
BEGIN
    FOR t IN SELECT * FROM history_tables ORDER BY name LOOP
        SELECT a.attname INTO key
        FROM pg_partitioned_table p
        JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
        WHERE p.partrelid = t.name::regclass;
        FOR day IN
            SELECT d::date FROM generate_series((now() AT TIME ZONE 'UTC')::date - days_back,
                                                (now() AT TIME ZONE 'UTC')::date + days_ahead,
                                                interval '1 day') AS d
        LOOP
            lo := day::timestamp AT TIME ZONE 'UTC';
            hi := (day + 1)::timestamp AT TIME ZONE 'UTC';
            CONTINUE WHEN EXISTS (
                SELECT FROM history_partitions(t.name) p
                WHERE p.lower_bound < hi AND p.upper_bound > lo
            );
            part := format('%s_%s', t.name, to_char(day, 'YYYYMMDD'));
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS) %s',
                           part, t.name, t.partition_options);
            EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= $1 AND %I < $2 RETURNING *) '
                           'INSERT INTO %I SELECT * FROM moved',
                           t.name || '_default', key, key, part) USING lo, hi;
            EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (id)', part);
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           t.name, part, lo, hi);
            made := made + 1;
        END LOOP;
    END LOOP;
    RETURN made;
END
$$;

-- Detach the partitions of every history table that end at or before `cutoff` and hold
-- no row its keep_while keeps; return their names, and those of partitions detached
-- before but not dropped (a replica stopped in between). Detaching locks the table for
-- a moment (ACCESS EXCLUSIVE), so the caller sets a lock_timeout and drops the detached
-- tables after this commits (history_partition_drop): dropping frees the files, which
-- takes longer than that lock need be held.
CREATE FUNCTION history_partitions_detach(cutoff timestamptz) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    t history_tables;
    p record;
    kept boolean;
BEGIN
    FOR t IN SELECT * FROM history_tables ORDER BY name LOOP
        IF cutoff = '-infinity' THEN
            CONTINUE;
        END IF;
        -- Days detached by an earlier pass that stopped before dropping them.
        RETURN QUERY
            SELECT c.relname::text FROM pg_class c
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
              AND NOT c.relispartition AND c.relname ~ ('^' || t.name || '_[0-9]{8}$');
        FOR p IN
            SELECT * FROM history_partitions(t.name) b
            WHERE b.upper_bound <= cutoff ORDER BY b.upper_bound
        LOOP
            EXECUTE format('SELECT EXISTS (SELECT FROM %I WHERE %s)', p.partition, t.keep_while)
                INTO kept;
            CONTINUE WHEN kept;
            EXECUTE format('ALTER TABLE %I DETACH PARTITION %I', t.name, p.partition);
            RETURN NEXT p.partition;
        END LOOP;
    END LOOP;
END
$$;

-- Drop a partition history_partitions_detach detached (nothing if it is attached, or
-- not a history table's day).
CREATE FUNCTION history_partition_drop(partition text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT FROM pg_class c JOIN history_tables t ON c.relname ~ ('^' || t.name || '_[0-9]{8}$')
        WHERE c.relname = partition AND c.relnamespace = 'public'::regnamespace
          AND c.relkind = 'r' AND NOT c.relispartition
    ) THEN
        EXECUTE format('DROP TABLE %I', partition);
    END IF;
END
$$;

-- Ids of the other history tables tell their day as run ids do (run_id above), each
-- from a sequence of its own.
CREATE FUNCTION history_id(seq regclass, at timestamptz) RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE AS $$
    SELECT greatest(floor(extract(epoch FROM at) / 86400)::bigint - 10957, 1) << 37
           | (nextval(seq) & 137438953471)
$$;

-- Whether a job with these alert settings (jobs.alerts) is alerted on `event` ("failed",
-- "recovered" or "missed"), given whether the operator set SCHEDULER_ALERT_URL: a job
-- without settings is alerted on everything there; one with settings, on its `on` list,
-- at its own url or else there.
CREATE FUNCTION alert_wanted(alerts jsonb, event text, operator_url boolean) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN alerts IS NULL THEN operator_url
                ELSE (alerts ? 'url' OR operator_url)
                     AND coalesce(alerts -> 'on', '["failed", "recovered", "missed"]') ? event
           END
$$;

-- How long after its due time a tick without a succeeded run is missed: the job's
-- alerts.missed_after_s, by default 60 s more than its timeout.
CREATE FUNCTION alert_missed_after(alerts jsonb, timeout_s integer) RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT make_interval(secs => coalesce((alerts ->> 'missed_after_s')::float8, 60 + timeout_s))
$$;

CREATE SEQUENCE alerts_id_seq;
CREATE SEQUENCE audit_id_seq;

-- The alerts outbox (SPEC §8): an alert is a row written in the transaction of the
-- outcome that causes it (a failed run, a recovery) or by the missed-tick check, and
-- delivered at least once by any replica's alert sender (engine/alerts.py). Partitioned
-- by the day of the tick it is about, so that "one alert per (job, tick, event)" is a
-- unique index, and kept like runs. No foreign key to jobs: an alert outlives its job.
CREATE TABLE alerts (
    -- history_id('alerts_id_seq', scheduled_for).
    id              bigint NOT NULL,
    tenant          text NOT NULL,
    job_id          bigint NOT NULL,
    job_name        text NOT NULL,
    run_id          bigint,
    event           text NOT NULL CONSTRAINT alerts_event_check
                    CHECK (event IN ('run.failed', 'job.recovered', 'job.missed')),
    -- The tick the alert is about.
    scheduled_for   timestamptz NOT NULL,
    -- The job's own alerts.url (checked by the SSRF guard); NULL: SCHEDULER_ALERT_URL
    -- as the sender knows it (the operator's, trusted).
    url             text,
    -- What is POSTed, but `at`, the time of sending.
    body            jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CONSTRAINT alerts_status_check
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    -- When the next attempt is due; while one is under way, when a sender that died
    -- with it is taken over (a lease).
    next_attempt_at timestamptz DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
) PARTITION BY RANGE (scheduled_for);
CREATE UNIQUE INDEX alerts_once ON alerts (job_id, scheduled_for, event);
-- Senders claim due alerts by next attempt.
CREATE INDEX alerts_due ON alerts (next_attempt_at) WHERE status = 'pending';
-- GET /alerts: a tenant's, newest first.
CREATE INDEX alerts_tenant ON alerts (tenant, id DESC);
CREATE TABLE alerts_default PARTITION OF alerts DEFAULT;
ALTER TABLE alerts_default ADD PRIMARY KEY (id);

-- The audit trail (SPEC §8): a row per change made through the API, written in the
-- change's transaction; kept like runs. No foreign key: a deleted job's trail stays.
CREATE TABLE audit (
    id         bigint NOT NULL DEFAULT history_id('audit_id_seq', now()),
    at         timestamptz NOT NULL DEFAULT now(),
    tenant     text NOT NULL,
    -- The API key's prefix, the JWT subject, `open`, or `system` (a window's end).
    actor      text NOT NULL,
    action     text NOT NULL CONSTRAINT audit_action_check
               CHECK (action IN ('job.create', 'job.update', 'job.replace', 'job.pause',
                                 'job.resume', 'job.trigger', 'job.delete', 'run.cancel')),
    job_id     bigint,
    run_id     bigint,
    -- {field: [old, new]}, secrets as "***".
    changes    jsonb NOT NULL DEFAULT '{}',
    request_id text
) PARTITION BY RANGE (at);
CREATE INDEX audit_tenant ON audit (tenant, id DESC);
CREATE INDEX audit_job ON audit (job_id, id DESC);
CREATE TABLE audit_default PARTITION OF audit DEFAULT;
ALTER TABLE audit_default ADD PRIMARY KEY (id);

INSERT INTO history_tables (name, partition_options, keep_while)
VALUES ('alerts', '', 'status = ''pending'''), ('audit', '', 'false');

SELECT history_partitions_create(7);

-- Webhook signing secrets per tenant (SPEC §5): `scheduler-svc keys secret --tenant T`.
-- Kept as they are, not hashed: signing needs them. During a rotation `previous` signs
-- too, until --retire-previous. A tenant without a row signs with SCHEDULER_WEBHOOK_SECRET.
CREATE TABLE tenant_secrets (
    tenant     text PRIMARY KEY,
    secret     text NOT NULL,
    previous   text,
    created_at timestamptz NOT NULL DEFAULT now(),
    rotated_at timestamptz
);

-- The jobs whose last final run failed: the next succeeded run of such a job is a
-- recovery (job.recovered). Written by the executors' exchange, never by the scheduler,
-- so it takes no lock on jobs.
CREATE TABLE jobs_failing (
    job_id bigint PRIMARY KEY
           CONSTRAINT jobs_failing_job_id_fkey REFERENCES jobs (id) ON DELETE CASCADE,
    since  timestamptz NOT NULL DEFAULT now()
);

-- A job's last run is derived from its runs, not stored on the job: executors never
-- write job rows, so they never contend with the scheduler's locks on them.
-- Jobs as the API shows them: with their key and owner, and the start and status of
-- their latest started run. A view keeps the columns it was made with (`j.*` is expanded
-- then): a release that shows more makes a view of its own rather than changing one
-- under the release before it. `k.tenant = j.tenant` always holds; saying so lets a
-- query by tenant and key find the job by job_keys_key.
CREATE VIEW jobs_api_v7 AS
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

-- The same with the columns of schema 6: the view of the release before this one
-- (migrations/0006_job_keys.sql), which its replicas read while replicas roll. This
-- release never reads it; the release after it drops it (contract).
CREATE VIEW jobs_api AS
SELECT j.id, j.tenant, j.name, j.attributes, j.schedule, j.timezone, j.target,
       j.max_attempts, j.backoff_s, j.backoff_max_s, j.timeout_s, j.misfire_policy,
       j.misfire_grace_s, j.overlap, j.status, j.next_run_at, j.created_at, j.updated_at,
       j.version, j.idempotency_key, j.request_hash, k.key, k.managed_by,
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

CREATE TABLE api_keys (
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

-- Releases before versioned migrations apply their whole schema.sql on every start. On
-- this schema theirs would fail (PostgreSQL refuses storage parameters on a partitioned
-- job_runs), but only after building an index over every partition of job_runs. This
-- stops such a release at its first statement, with an error that says why and what
-- to do. It knows their script by its last statement, which this file and the
-- migrations after 0004 never contain. Event triggers need a superuser: without one,
-- such a release stops on PostgreSQL's own error, after that index build.
CREATE FUNCTION scheduler_refuse_older_release() RETURNS event_trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_query() ~ 'ON CONFLICT \(singleton\) DO UPDATE SET version = excluded\.version' THEN
        RAISE EXCEPTION 'this database is at scheduler-svc schema version %, newer than this release knows: run the release that migrated it (upgrade order: migrate, then roll the replicas)',
            (SELECT version FROM schema_version)
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
END
$$;

DO $$
BEGIN
    CREATE EVENT TRIGGER scheduler_refuse_older_release ON ddl_command_start
        EXECUTE FUNCTION scheduler_refuse_older_release();
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'not a superuser: no guard against releases before versioned migrations';
    WHEN duplicate_object THEN
        NULL;
END
$$;

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

INSERT INTO schema_version (version) VALUES (9);
