-- Migration 0005: run history partitioned by day (job_runs), run ids that tell their
-- day, and the history-table machinery that creates and drops partitions.
--
-- The runs recorded so far are not copied: the table that held them becomes the first
-- partition, job_runs_before_v5, covering every tick up to the day after tomorrow
-- (UTC), and day partitions follow it. Three steps, each committed on its own, each
-- safe to run again if the migration stops part-way:
--   1. functions, tables, and a bound on the runs so far, added NOT VALID (a moment's
--      lock);
--   2. that bound checked against every row, under a lock that lets reads and writes
--      go on (a table scan: seconds for millions of runs);
--   3. the swap, under a short exclusive lock (of jobs too, for a moment): the old table
--      is renamed and attached to
--      the new partitioned job_runs; the bound proves its rows fit, so nothing is
--      scanned or copied.
-- Replicas of the previous release keep running throughout: the columns, the unique
-- (job, tick) their inserts name in ON CONFLICT, and the NOTIFY trigger stay as they
-- were, and job_runs_id gives their runs ids. One of them started after this migration
-- stops with a clear error (scheduler_refuse_older_release): migrate, then roll.

-- step: functions, tables, and a bound on the runs recorded so far
CREATE OR REPLACE FUNCTION run_id_day_start(id bigint) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN id >> 37 <= 1 THEN '-infinity'::timestamptz
                ELSE to_timestamp(((10957 + (id >> 37)) * 86400)::float8) END
$$;

CREATE OR REPLACE FUNCTION run_id_day_end(id bigint) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN id >> 37 = 0 THEN 'infinity'::timestamptz
                ELSE to_timestamp(((10957 + (id >> 37) + 1) * 86400)::float8) END
$$;

-- The day of run ids below `cursor`'s, counting as run ids do: the cursor's day, or today
-- (UTC) without a cursor. Stable and a single expression, so that PostgreSQL inlines it
-- and a window of days from it still leaves out the partitions it cannot touch.
CREATE OR REPLACE FUNCTION run_id_cursor_day(cursor bigint) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(cursor >> 37, floor(extract(epoch FROM now()) / 86400)::bigint - 10957)
$$;

-- The same bounds for a set of run ids: from the first day's start to the last day's end.
CREATE OR REPLACE FUNCTION run_ids_day_start(ids bigint[]) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT min(run_id_day_start(id)) FROM unnest(ids) AS id
$$;

CREATE OR REPLACE FUNCTION run_ids_day_end(ids bigint[]) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT max(run_id_day_end(id)) FROM unnest(ids) AS id
$$;

CREATE TABLE IF NOT EXISTS history_tables (
    name              text PRIMARY KEY,
    -- Storage parameters every new partition gets (the partitioned table has none).
    partition_options text NOT NULL DEFAULT '',
    -- A condition on rows: a partition past the retention in which a row meets it is
    -- kept (and retried at the next pass) rather than dropped.
    keep_while        text NOT NULL DEFAULT 'false'
);

-- The partitions of history table `parent` with their bounds ('-infinity' for MINVALUE,
-- 'infinity' for MAXVALUE; NULL for the default partition).
CREATE OR REPLACE FUNCTION history_partitions(parent text)
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
CREATE OR REPLACE FUNCTION history_partitions_create(days_ahead integer, days_back integer DEFAULT 0)
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
CREATE OR REPLACE FUNCTION history_partitions_detach(cutoff timestamptz) RETURNS SETOF text
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
CREATE OR REPLACE FUNCTION history_partition_drop(partition text) RETURNS void
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

CREATE OR REPLACE FUNCTION job_runs_assign_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.id := run_id(NEW.scheduled_for);
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION scheduler_refuse_older_release() RETURNS event_trigger
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

DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'job_runs'::regclass) = 'r'
       AND NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'job_runs_before_v5_bound') THEN
        EXECUTE format('ALTER TABLE job_runs ADD CONSTRAINT job_runs_before_v5_bound '
                       'CHECK (scheduled_for < %L) NOT VALID',
                       ((now() AT TIME ZONE 'UTC')::date + 2)::timestamp AT TIME ZONE 'UTC');
    END IF;
END
$$;

-- step: check the bound against the runs recorded so far
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_constraint WHERE conname = 'job_runs_before_v5_bound'
                                           AND NOT convalidated) THEN
        ALTER TABLE job_runs VALIDATE CONSTRAINT job_runs_before_v5_bound;
    END IF;
END
$$;

-- step: swap in the partitioned job_runs
SET LOCAL lock_timeout = '10s';
DO $migration$
DECLARE
    bound timestamptz;
    suffix text;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'job_runs'::regclass) = 'p' THEN
        RETURN;
    END IF;
    -- In the order readers take them (the view, then jobs, then job_runs: locking a view
    -- locks its tables too), so that a GET under way cannot deadlock with the swap.
    LOCK TABLE jobs_with_last_run IN ACCESS EXCLUSIVE MODE;
    SELECT (regexp_match(pg_get_constraintdef(oid), '''(.+)'''))[1]::timestamptz INTO bound
    FROM pg_constraint WHERE conname = 'job_runs_before_v5_bound';

    ALTER TABLE job_runs RENAME TO job_runs_before_v5;
    -- Its identity sequence goes with the identity; job_runs_id_seq is made anew below.
    ALTER TABLE job_runs_before_v5 ALTER COLUMN id DROP IDENTITY;
    FOREACH suffix IN ARRAY ARRAY['pkey', 'one_per_tick', 'pending', 'leased', 'job_id',
                                  'created_brin', 'active', 'waiting'] LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', 'job_runs_' || suffix,
                       'job_runs_before_v5_' || suffix);
    END LOOP;
    DROP TRIGGER job_runs_inserted ON job_runs_before_v5;

    CREATE SEQUENCE job_runs_id_seq;
    EXECUTE $run_id$
CREATE FUNCTION run_id(tick timestamptz) RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE AS $body$
    SELECT greatest(floor(extract(epoch FROM tick) / 86400)::bigint - 10957, 1) << 37
           | (nextval('job_runs_id_seq') & 137438953471)
$body$;$run_id$;

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
        -- never executed (overlap forbidden), `error` says why.
        status           text NOT NULL DEFAULT 'pending' CONSTRAINT job_runs_status_check
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

    -- Only for inserts that leave the id out: a row trigger's call costs, and the statements
    -- of this release pass run_id(scheduled_for) themselves.
    CREATE TRIGGER job_runs_id
        BEFORE INSERT ON job_runs
        FOR EACH ROW WHEN (NEW.id IS NULL) EXECUTE FUNCTION job_runs_assign_id();

    EXECUTE format('ALTER TABLE job_runs ATTACH PARTITION job_runs_before_v5 '
                   'FOR VALUES FROM (MINVALUE) TO (%L)', bound);
    ALTER TABLE job_runs_before_v5 DROP CONSTRAINT job_runs_before_v5_bound;
    CREATE TABLE job_runs_default PARTITION OF job_runs DEFAULT;
    ALTER TABLE job_runs_default ADD PRIMARY KEY (id);
    INSERT INTO history_tables (name, partition_options, keep_while) VALUES (
        'job_runs',
        'WITH (autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_scale_factor = 0.05)',
        'status IN (''pending'', ''running'')'
    );
    CREATE TRIGGER job_runs_inserted
        AFTER INSERT ON job_runs
        FOR EACH STATEMENT EXECUTE FUNCTION scheduler_notify('scheduler_runs');
    -- Views bind tables, not names: this one still reads job_runs_before_v5 alone.
    EXECUTE $view$
CREATE OR REPLACE VIEW jobs_with_last_run AS
SELECT j.*, last_run.started_at AS last_run_at, last_run.status AS last_run_status
FROM jobs j
LEFT JOIN LATERAL (
    SELECT r.started_at, r.status
    FROM job_runs r
    WHERE r.job_id = j.id AND r.started_at IS NOT NULL
    ORDER BY r.id DESC
    LIMIT 1
) last_run ON true$view$;
END
$migration$;

SELECT history_partitions_create(7);
UPDATE schema_version SET version = 5, applied_at = now() WHERE version < 5;
