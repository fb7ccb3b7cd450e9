-- Every SQL statement of scheduler-svc but the schema (schema.sql). Each block is
-- named by a `-- name --` line, described by the comment lines after it, and run
-- by the store.py function of the same name. Values travel only as $n parameters;
-- the tenant is always one of them.

-- schema_lock --
-- Wait for the schema advisory lock and hold it for this session (store/migrate.py):
-- a migration commits step by step. Releases before versioned migrations took the same
-- key per transaction.
SELECT pg_advisory_lock($1);

-- schema_unlock --
-- Let the next replica migrate.
SELECT pg_advisory_unlock($1);

-- schema_exists --
-- Does the database have a schema of ours at all (empty databases get schema.sql)?
SELECT to_regclass('schema_version') IS NOT NULL OR to_regclass('jobs') IS NOT NULL;

-- schema_migrations_exist --
-- Databases from before versioned migrations have no record of them.
SELECT to_regclass('schema_migrations') IS NOT NULL;

-- schema_migrations_create --
-- The record of migrations, for a database from before versioned migrations (schema.sql
-- has the same table).
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms double precision
);

-- schema_migrations_get --
-- The migrations the database has had.
SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version;

-- schema_migration_record --
-- Record a migration as applied.
INSERT INTO schema_migrations (version, name, checksum, duration_ms)
VALUES ($1, $2, $3, $4);

-- schema_version_get --
-- The schema version the database is at.
SELECT version FROM schema_version;

-- db_now --
-- The database clock, which decides due-ness (the transaction's start inside one).
SELECT now();

-- job_insert --
-- Create a job, its row of job_keys if it has a key or an owner, and its audit row
-- (audit_insert's, `job.create` by actor $24 with changes $25 in request $26), in one
-- statement: atomic by itself, so a create needs no transaction of its own and its
-- round trips. With an Idempotency-Key this tenant already used, nothing is inserted
-- and no row comes back: the caller then reads the first job by it. A key another job
-- of the tenant has fails the whole statement on job_keys_key (after waiting for a
-- concurrent insert of that key to commit): no job is ever left without the key it was
-- created with, nor an audit row without its job.
-- The columns of jobs are named, not `*`, here and below: a column a later release adds
-- to jobs must not change the row type of a statement this release has prepared.
WITH job AS (
    INSERT INTO jobs (tenant, name, attributes, schedule, timezone, target,
                      max_attempts, backoff_s, backoff_max_s, timeout_s,
                      misfire_policy, misfire_grace_s, overlap,
                      status, next_run_at, idempotency_key, request_hash,
                      tags, jitter_s, alerts, paused_until)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $16, $17, $18, $19,
            $20, $21, $22, $23)
    ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, tenant, name, attributes, schedule, timezone, target, max_attempts,
              backoff_s, backoff_max_s, timeout_s, misfire_policy, misfire_grace_s,
              overlap, status, next_run_at, created_at, updated_at, version,
              tags, jitter_s, paused_until, alerts
), keyed AS (
    INSERT INTO job_keys (job_id, tenant, key, managed_by)
    SELECT id, tenant, $14, $15 FROM job
    WHERE $14::text IS NOT NULL OR $15::text IS NOT NULL
), audited AS (
    INSERT INTO audit (tenant, actor, action, job_id, changes, request_id)
    SELECT tenant, $24, 'job.create', id, $25, $26 FROM job
)
SELECT job.*, $14::text AS key, $15::text AS managed_by,
       NULL::timestamptz AS last_run_at, NULL::text AS last_run_status
FROM job;

-- job_get --
-- One job of this tenant.
SELECT * FROM jobs_api_v7 WHERE tenant = $1 AND id = $2;

-- job_get_by_key --
-- The job of this tenant with this key (by job_keys_key: the view joins on the tenant).
SELECT * FROM jobs_api_v7 WHERE tenant = $1 AND key = $2;

-- job_get_by_idempotency_key --
-- The job this tenant created with this Idempotency-Key, with the hash of that request.
SELECT * FROM jobs_api_v7 WHERE tenant = $1 AND idempotency_key = $2;

-- job_lock --
-- Lock one job of this tenant until the end of the caller's transaction (a PATCH reads,
-- merges and writes it without losing a concurrent change); its id, or no row. The
-- caller reads the job after (job_get): a statement that waited for the lock reads
-- job_keys as it was when the statement began, before the change it waited for.
SELECT id FROM jobs WHERE tenant = $1 AND id = $2 FOR UPDATE;

-- job_lock_by_key --
-- The job of this tenant with this key, as the API shows it, locked until the end of
-- the caller's transaction (a PUT by key compares it with what it was sent, then
-- writes; an unchanged job is answered as it is). Its row of job_keys is locked too,
-- after the job's (the order of every writer of job_keys: the job first): a statement
-- that waited reads them both again as the change it waited for left them, so a key
-- moved to another job or removed meanwhile finds nothing.
SELECT j.id, j.tenant, j.name, j.attributes, j.schedule, j.timezone, j.target,
       j.max_attempts, j.backoff_s, j.backoff_max_s, j.timeout_s, j.misfire_policy,
       j.misfire_grace_s, j.overlap, j.status, j.next_run_at, j.created_at, j.updated_at,
       j.version, j.tags, j.jitter_s, j.paused_until, j.alerts, k.key, k.managed_by,
       last_run.started_at AS last_run_at, last_run.status AS last_run_status
FROM job_keys k
JOIN jobs j ON j.id = k.job_id AND j.tenant = k.tenant
LEFT JOIN LATERAL (
    SELECT r.started_at, r.status FROM job_runs r
    WHERE r.job_id = j.id AND r.started_at IS NOT NULL
    ORDER BY r.id DESC LIMIT 1
) last_run ON true
WHERE k.tenant = $1 AND k.key = $2
FOR UPDATE OF j, k;

-- jobs_list --
-- A page of this tenant's jobs, newest first, by keyset: ids below the cursor.
-- NULL filters match everything.
SELECT * FROM jobs_api_v7
WHERE tenant = $1
  AND ($2::bigint IS NULL OR id < $2)
  AND ($3::text IS NULL OR status = $3)
  AND ($4::text IS NULL OR name = $4)
ORDER BY id DESC
LIMIT $5;

-- jobs_list_tagged --
-- The same page, of the jobs having every tag of $6: found by jobs_tags (GIN) first, the
-- page cut before the view's last runs are read.
WITH page AS (
    SELECT id FROM jobs
    WHERE tenant = $1 AND tags @> $6::text[]
      AND ($2::bigint IS NULL OR id < $2)
      AND ($3::text IS NULL OR status = $3)
      AND ($4::text IS NULL OR name = $4)
    ORDER BY id DESC
    LIMIT $5
)
SELECT a.* FROM page JOIN jobs_api_v7 a ON a.id = page.id
WHERE a.tenant = $1
ORDER BY a.id DESC;

-- jobs_list_keyed --
-- The same page, of the jobs with key $5 or owner $6 (NULL: any), or both: found in
-- job_keys first, by job_keys_managed_by when $6 is given, else by job_keys_key; the
-- page is cut before the view's last runs are read.
WITH keyed AS (
    SELECT job_id FROM job_keys
    WHERE tenant = $1 AND managed_by = $6 AND ($5::text IS NULL OR key = $5)
      AND ($2::bigint IS NULL OR job_id < $2)
    UNION ALL
    SELECT job_id FROM job_keys
    WHERE tenant = $1 AND key = $5 AND $6::text IS NULL
      AND ($2::bigint IS NULL OR job_id < $2)
), page AS (
    SELECT j.id FROM keyed JOIN jobs j ON j.id = keyed.job_id
    WHERE j.tenant = $1
      AND ($3::text IS NULL OR j.status = $3)
      AND ($4::text IS NULL OR j.name = $4)
      AND ($8::text[] IS NULL OR j.tags @> $8::text[])
    ORDER BY j.id DESC
    LIMIT $7
)
SELECT a.* FROM page JOIN jobs_api_v7 a ON a.id = page.id
WHERE a.tenant = $1
ORDER BY a.id DESC;

-- job_update --
-- Write every writable field of a job, with its new status and next tick, and bump its
-- version; its row of job_keys too: made, changed, or deleted when it has neither a key
-- nor an owner left. A key another job of the tenant has fails the statement on
-- job_keys_key. Returns the job as the API shows it.
WITH updated AS (
    UPDATE jobs
    SET name = $3, attributes = $4, schedule = $5, timezone = $6, target = $7,
        max_attempts = $8, backoff_s = $9, backoff_max_s = $10, timeout_s = $11,
        misfire_policy = $12, misfire_grace_s = $13, overlap = $14,
        status = $17, next_run_at = $18,
        tags = $19, jitter_s = $20, alerts = $21, paused_until = $22,
        updated_at = now(), version = version + 1
    WHERE tenant = $1 AND id = $2
    RETURNING id, tenant, name, attributes, schedule, timezone, target, max_attempts,
              backoff_s, backoff_max_s, timeout_s, misfire_policy, misfire_grace_s,
              overlap, status, next_run_at, created_at, updated_at, version,
              tags, jitter_s, paused_until, alerts
), keyed AS (
    INSERT INTO job_keys (job_id, tenant, key, managed_by)
    SELECT id, tenant, $15, $16 FROM updated
    WHERE $15::text IS NOT NULL OR $16::text IS NOT NULL
    ON CONFLICT (job_id) DO UPDATE SET key = excluded.key, managed_by = excluded.managed_by
    WHERE (job_keys.key, job_keys.managed_by)
          IS DISTINCT FROM (excluded.key, excluded.managed_by)
), unkeyed AS (
    DELETE FROM job_keys k USING updated
    WHERE k.job_id = updated.id AND $15::text IS NULL AND $16::text IS NULL
)
-- The view would show the row as it was before this statement, so join by hand.
SELECT updated.*, $15::text AS key, $16::text AS managed_by,
       last_run.started_at AS last_run_at, last_run.status AS last_run_status
FROM updated
LEFT JOIN LATERAL (
    SELECT r.started_at, r.status FROM job_runs r
    WHERE r.job_id = updated.id AND r.started_at IS NOT NULL
    ORDER BY r.id DESC LIMIT 1
) last_run ON true;

-- job_delete --
-- Delete a job; its runs and its row of job_keys go with it (ON DELETE CASCADE).
DELETE FROM jobs WHERE tenant = $1 AND id = $2
RETURNING id;

-- job_delete_by_key --
-- Delete the job of this tenant with this key; its runs go with it. Both rows are locked
-- first, the job's first, as job_lock_by_key does: a key moved or removed while this
-- waited deletes nothing.
WITH doomed AS (
    SELECT j.id FROM job_keys k
    JOIN jobs j ON j.id = k.job_id AND j.tenant = k.tenant
    WHERE k.tenant = $1 AND k.key = $2
    FOR UPDATE OF j, k
)
DELETE FROM jobs WHERE tenant = $1 AND id IN (SELECT id FROM doomed)
RETURNING id;

-- runs_skip_pending --
-- A paused job's scheduled runs that have not started are not run: mark them skipped.
-- Manual runs and runs under way are left alone.
UPDATE job_runs
SET status = 'skipped', error = 'job paused before this run started', finished_at = now()
WHERE job_id = $1 AND status = 'pending' AND trigger = 'schedule' AND attempt = 0;

-- jobs_claim_due --
-- Lock due, active jobs for this scheduler pass (the caller's transaction), as one
-- JSON array (decoded in one go, much cheaper than row by row). `unfinished` is NULL
-- unless an overlap-forbidding job still has a run pending, running or waiting (one
-- index probe, as for most jobs that is all); then it says what those runs mean for
-- a tick (overlap.plan_ticks):
--   pending_since: its earliest pending run that is not catch-up became claimable then
--                  (a tick since is an overlap for certain: a pending run has no attempt
--                  under way);
--   blocker:       one of its claimable runs, pending or running (a running one may have
--                  ended on its replica without the database knowing yet);
--   waiting:       it has runs waiting for an earlier one to end.
-- The rest is what running a tick needs, in the pass itself or by this replica's executor.
--
-- Read committed: a job another pass held, then advanced and released after this
-- statement's snapshot was taken, is locked in its new version, but its runs are read
-- as the snapshot has them, without the ones that pass inserted. Under forbid that
-- could run a tick beside them, so such a job (`changed`) is left to the next pass.
-- Unfinished runs are looked for from $4 on, the replica's reading of the floor of
-- unfinished runs, so that job_runs is pruned to those days before the probes are set
-- up; `floor` is the floor in this statement's snapshot, and a claim whose $4 was above
-- it is made again from there, in the same transaction (store/unfinished.py).
SELECT coalesce(json_agg(claimed), '[]')::text AS jobs,
       (SELECT since FROM unfinished_runs_floor) AS floor
FROM (
    SELECT due.id, due.tenant, due.name, due.attributes, due.target, due.timeout_s,
           due.max_attempts, due.backoff_s, due.backoff_max_s, due.schedule, due.timezone,
           due.next_run_at, due.misfire_policy, due.misfire_grace_s, due.overlap, due.now,
           due.jitter_s,
           CASE WHEN due.busy THEN (
               SELECT json_build_object(
                   'pending_since', min(r.ready_at) FILTER (
                       WHERE r.status = 'pending' AND NOT r.catch_up
                         AND r.next_attempt_at IS NOT NULL),
                   'blocker', max(r.id) FILTER (WHERE r.next_attempt_at IS NOT NULL),
                   'waiting', coalesce(bool_or(r.next_attempt_at IS NULL), false))
               FROM job_runs r
               WHERE r.job_id = due.id AND r.status IN ('pending', 'running')
                 AND r.scheduled_for >= $4::timestamptz
           ) END AS unfinished
    FROM (
        SELECT j.id, j.tenant, j.name, j.attributes, j.target, j.timeout_s, j.max_attempts,
               j.backoff_s, j.backoff_max_s, j.schedule, j.timezone, j.next_run_at,
               j.misfire_policy, j.misfire_grace_s, j.overlap, j.jitter_s,
               -- OFFSET 0: one probe of job_runs_active per job. Without it the planner
               -- may hash every unfinished run instead, which a backlog makes slow.
               j.overlap = 'forbid' AND EXISTS (
                   SELECT FROM job_runs r
                   WHERE r.job_id = j.id AND r.status IN ('pending', 'running')
                     AND r.scheduled_for >= $4::timestamptz
                   OFFSET 0
               ) AS busy,
               j.overlap = 'forbid'
                   AND j.ctid IS DISTINCT FROM (SELECT s.ctid FROM jobs s WHERE s.id = j.id)
                   AS changed,
               coalesce($1::timestamptz, now()) AS now
        FROM jobs j
        WHERE j.status = 'active' AND j.next_run_at <= coalesce($1::timestamptz, now())
          -- The replica's tenants (SCHEDULER_TENANTS); NULL: all of them.
          AND ($3::text[] IS NULL OR j.tenant = ANY($3::text[]))
        ORDER BY j.next_run_at
        LIMIT $2
        -- NO KEY UPDATE, the lock the UPDATE takes anyway: it does not block a manual
        -- trigger's insert of a run of this job (its foreign key check shares the key).
        FOR NO KEY UPDATE OF j SKIP LOCKED
    ) due
    WHERE NOT due.changed
) claimed;

-- runs_materialize --
-- In the scheduler's transaction: advance each claimed job and insert a run per due
-- tick. A tick some replica already materialized conflicts on job_runs_one_per_tick
-- and is dropped: that, not luck, is what makes a tick run once. A tick is inserted
-- pending (for any executor), waiting (pending with no attempt due, for run $12 or,
-- when that is NULL, behind the job's other waiting runs: runs_waiting_settle decides
-- it), skipped (overlap), catch-up or not ($13), succeeded (a log-target tick the pass runs itself, as worker
-- $9, before it commits), or running: leased to worker $9's executor for $11 seconds
-- (timeout plus margin), which starts it once this commits. Returns how many runs
-- were inserted and, as JSON, those neither pending nor waiting (a dropped tick must
-- not be run, nor reported). $14: each tick's due time (jitter; NULL: the tick). A tick
-- skipped as an overlap writes its job.missed alert ($15: SCHEDULER_ALERT_URL is set).
-- $8 and $11 to $14 may come empty where every tick has NULL (false for $13): unnest
-- pads a shorter array with NULLs, and most passes have no errors, waits, catch-ups or
-- jitter, so the caller need not encode a value per tick for them.
WITH this_transaction AS (
    -- The scheduler's own transaction. A handshake with schema.sql's scheduler_notify()
    -- trigger function, through two transaction-local settings it reads: with
    -- scheduler.advancing on, the jobs trigger stays quiet, and with
    -- scheduler.runs_quiet on, so does the runs trigger (unless there is a pending run
    -- for an executor, $10). It commits
    -- durably even on the worker's asynchronous-commit pool: a tick materialized,
    -- delivered and then forgotten in a crash would be materialized again as a new
    -- run, under a new idempotency key.
    SELECT set_config('scheduler.advancing', 'on', true),
           set_config('scheduler.runs_quiet', CASE WHEN $10 THEN 'off' ELSE 'on' END, true),
           set_config('synchronous_commit', 'on', true)
), advanced AS (
    UPDATE jobs j
    SET next_run_at = a.next_run_at, status = a.status
    FROM unnest($1::bigint[], $2::timestamptz[], $3::text[]) AS a(id, next_run_at, status),
         this_transaction
    -- The ANY repeats the join on purpose: it lets the planner look the rows up by
    -- primary key whatever its statistics say (stale ones made it scan the table).
    WHERE j.id = a.id AND j.id = ANY($1::bigint[])
), inserted AS (
    INSERT INTO job_runs (id, job_id, tenant, scheduled_for, trigger, status, error,
                          next_attempt_at, attempt, worker, started_at, finished_at,
                          duration_ms, lease_expires_at, ready_at, waits_for, catch_up, due_at)
    SELECT run_id(t.scheduled_for), t.job_id, t.tenant, t.scheduled_for, 'schedule',
           CASE WHEN t.status = 'waiting' THEN 'pending' ELSE t.status END, t.error,
           -- A jittered tick's first attempt is due at its due time, not at the tick.
           CASE WHEN t.status <> 'waiting' THEN coalesce(t.due_at, t.scheduled_for) END,
           CASE WHEN t.status IN ('succeeded', 'running') THEN 1 ELSE 0 END,
           CASE WHEN t.status IN ('succeeded', 'running') THEN $9 END,
           CASE WHEN t.status IN ('succeeded', 'running') THEN clock_timestamp() END,
           CASE WHEN t.status IN ('succeeded', 'skipped') THEN clock_timestamp() END,
           CASE WHEN t.status = 'succeeded' THEN 0 END,
           clock_timestamp() + make_interval(secs => t.lease_s),
           -- Claimable from its due time (greatest() passes over a NULL).
           CASE WHEN t.status <> 'waiting' THEN greatest(clock_timestamp(), t.due_at) END,
           t.waits_for, coalesce(t.catch_up, false), t.due_at
    FROM unnest($4::bigint[], $5::text[], $6::timestamptz[], $7::text[], $8::text[],
                $11::float8[], $12::bigint[], $13::boolean[], $14::timestamptz[])
             AS t(job_id, tenant, scheduled_for, status, error, lease_s, waits_for, catch_up,
                  due_at),
         this_transaction
    ON CONFLICT (job_id, scheduled_for) WHERE trigger = 'schedule' DO NOTHING
    RETURNING id, job_id, scheduled_for, status, started_at, next_attempt_at IS NULL AS waiting,
              error, due_at
), missed AS (
    -- A tick skipped as an overlap will have no succeeded run: its job.missed alert is
    -- written now, in this transaction, and sent when the tick is missed_after_s late.
    INSERT INTO alerts (id, tenant, job_id, job_name, run_id, event, scheduled_for, url, body,
                        next_attempt_at)
    SELECT history_id('alerts_id_seq', i.scheduled_for), j.tenant, i.job_id, j.name, i.id,
           'job.missed', i.scheduled_for, j.alerts ->> 'url',
           json_build_object('event', 'job.missed', 'job_id', i.job_id, 'job_name', j.name,
                             'run_id', i.id, 'scheduled_for', i.scheduled_for,
                             'error', i.error),
           coalesce(i.due_at, i.scheduled_for) + alert_missed_after(j.alerts, j.timeout_s)
    FROM inserted i
    JOIN jobs j ON j.id = i.job_id
    WHERE i.status = 'skipped' AND alert_wanted(j.alerts, 'missed', $15)
    ON CONFLICT (job_id, scheduled_for, event) DO NOTHING
)
SELECT count(*),
       coalesce(json_agg(json_build_object('id', id, 'job_id', job_id,
                                           'scheduled_for', scheduled_for,
                                           'status', status, 'started_at', started_at,
                                           'due_at', due_at))
                FILTER (WHERE status <> 'pending'), '[]')::text,
       count(*) FILTER (WHERE status = 'pending' AND NOT waiting)
FROM inserted;

-- jobs_next_due --
-- Seconds until the earliest next_run_at of an active job by the database clock
-- (negative when overdue); NULL when no job is active. ORDER BY … LIMIT 1 rather
-- than min(): with statistics that believe no job is active (jobs created paused,
-- then started, before the next ANALYZE) the planner aggregated over every entry
-- of jobs_due, a thousand buffers a pass; this reads the index from its start.
-- And the seconds until the earliest end of a maintenance window (jobs_paused_until),
-- NULL when no window is open: the scheduler resumes those jobs then (jobs_window_ended).
SELECT (SELECT extract(epoch FROM next_run_at - now())::float8
        FROM jobs
        WHERE status = 'active' AND ($1::text[] IS NULL OR tenant = ANY($1::text[]))
        ORDER BY next_run_at
        LIMIT 1),
       (SELECT extract(epoch FROM paused_until - now())::float8
        FROM jobs
        WHERE paused_until IS NOT NULL AND status = 'paused'
          AND ($1::text[] IS NULL OR tenant = ANY($1::text[]))
        ORDER BY paused_until
        LIMIT 1);

-- jobs_window_ended --
-- Paused jobs whose maintenance window is over, locked for the caller's transaction
-- (SKIP LOCKED: every replica may try, exactly one resumes each), as the API shows them.
-- Up to $2 of them.
WITH ended AS (
    SELECT id FROM jobs
    WHERE paused_until <= now() AND status = 'paused'
      AND ($1::text[] IS NULL OR tenant = ANY($1::text[]))
    ORDER BY paused_until
    LIMIT $2
    FOR NO KEY UPDATE SKIP LOCKED
)
SELECT a.* FROM ended JOIN jobs_api_v7 a ON a.id = ended.id
ORDER BY a.id;

-- jobs_bulk_match --
-- The ids of this tenant's jobs a bulk call's filter matches (every criterion given holds;
-- at least one is, or $6 `all`), locked in id order (so that two bulk calls cannot
-- deadlock) for the caller's transaction; a dry run locks them for the statement only.
SELECT id FROM jobs
WHERE tenant = $1
  AND ($2::bigint[] IS NULL OR id = ANY($2::bigint[]))
  AND ($3::text[] IS NULL OR tags @> $3::text[])
  AND ($4::text IS NULL OR name = $4)
  AND ($5::text IS NULL OR status = $5)
  AND ($2::bigint[] IS NOT NULL OR $3::text[] IS NOT NULL OR $4::text IS NOT NULL
       OR $5::text IS NOT NULL OR $6)
ORDER BY id
FOR NO KEY UPDATE;

-- jobs_bulk_count --
-- How many jobs jobs_bulk_match would lock, without locking any: a dry run only counts,
-- and must not hold thousands of jobs away from the scheduler's claim meanwhile.
SELECT count(*) FROM jobs
WHERE tenant = $1
  AND ($2::bigint[] IS NULL OR id = ANY($2::bigint[]))
  AND ($3::text[] IS NULL OR tags @> $3::text[])
  AND ($4::text IS NULL OR name = $4)
  AND ($5::text IS NULL OR status = $5)
  AND ($2::bigint[] IS NOT NULL OR $3::text[] IS NOT NULL OR $4::text IS NOT NULL
       OR $5::text IS NOT NULL OR $6);

-- jobs_get_many --
-- Jobs of this tenant by id, as the API shows them, in id order.
SELECT * FROM jobs_api_v7 WHERE tenant = $1 AND id = ANY($2::bigint[]) ORDER BY id;

-- runs_due_backlog --
-- Due ticks not yet started, for the scheduler_due_backlog gauge: pending runs whose
-- attempt is due or that wait for an earlier run of their job, plus active jobs whose
-- next tick is due but not yet materialized (a job that missed several ticks counts
-- once). And how far behind the service is, for scheduler_behind_seconds: seconds since
-- the earliest due time among pending runs whose attempt is due and active jobs whose
-- next tick is due (0 when there are none). Waiting runs count in the backlog but not
-- in how far behind: they wait for an earlier run of their job by design (overlap),
-- not for a replica. Every part reads a partial index.
SELECT (SELECT count(*) FROM job_runs
        WHERE status = 'pending' AND (next_attempt_at <= now() OR next_attempt_at IS NULL))
     + (SELECT count(*) FROM jobs
        WHERE status = 'active' AND next_run_at <= now()) AS ticks,
       coalesce(extract(epoch FROM now() - least(
           (SELECT next_attempt_at FROM job_runs
            WHERE status = 'pending' AND next_attempt_at <= now()
            ORDER BY next_attempt_at LIMIT 1),
           (SELECT next_run_at FROM jobs
            WHERE status = 'active' AND next_run_at <= now()
            ORDER BY next_run_at LIMIT 1))), 0)::float8 AS behind_s;

-- unfinished_floor_lock --
-- Hold the floor of unfinished runs (schema.sql: unfinished_runs_floor) for the rest of
-- the caller's transaction: an insert below it (job_runs_below_floor) waits for it, and
-- it waits for one under way.
SELECT since FROM unfinished_runs_floor FOR UPDATE;

-- unfinished_floor_raise --
-- In the transaction that holds the floor (unfinished_floor_lock), so that this
-- statement's snapshot has every run inserted below it: set it to the oldest unfinished
-- tick before the start of the day before yesterday (UTC), or to that start. One read
-- of the older days' unfinished runs. Returns the floor.
UPDATE unfinished_runs_floor f
SET since = coalesce((SELECT min(r.scheduled_for) FROM job_runs r
                      WHERE r.status IN ('pending', 'running') AND r.scheduled_for < c.cap),
                     c.cap)
FROM (SELECT date_trunc('day', now(), 'UTC') - interval '2 days' AS cap) c
RETURNING f.since;

-- runs_exchange --
-- An executor's one round trip. It records what attempts came to ($2 … $7) for
-- runs still leased to worker $1: succeeded or failed (final), or pending again
-- after a delay (a retry). A final run's finished_at is when the attempt really ended,
-- $11 seconds before now as the replica measured it: after a database outage a result
-- reaches the database long after the run ended, and overlap is judged by the end.
-- And it leases up to $8 more runs: pending runs whose
-- attempt is due and, when $10, running runs whose lease expired (their worker
-- died), which restart as their next attempt; a lease lasts the job's timeout plus
-- $9 seconds. Returns one row: the ids recorded (a result missing there lost its
-- lease, or its job, meanwhile), the runs leased, as JSON, the seconds until the
-- next pending run's attempt is due and, when $10, until the next lease runs out.
-- Waiting runs that may now be decided (runs_waiting_settle) come back too: the runs
-- this statement ended whose job has waiting runs, and, when $10, the jobs whose
-- waiting runs have no earlier run left to wait for (a scheduler pass added them while
-- this or another statement recorded the end they waited for, which neither could see).
-- Only runs of the tenants $12 are leased or looked at (NULL: every tenant's).
-- A failed run, and the first succeeded run of a job after a failed one, write their
-- alert in this statement (the outbox; $13: whether SCHEDULER_ALERT_URL is set).
--
-- Leases are looked at only when $10 (the executor asks about once a second, and
-- when a lease it knows of runs out): every finished run leaves a dead entry in
-- job_runs_leased until vacuum, and at thousands of runs a second, walking past them
-- on every exchange was most of what the exchange cost.
-- Unfinished runs are looked for from $16 on, the replica's reading of the floor of
-- unfinished runs, which `floor` returns as this statement's snapshot holds it (see
-- jobs_claim_due; an exchange whose $16 was above it may have missed runs, and the
-- executor exchanges again at once).
WITH durable AS (
    -- A statement that records results commits durably, though the worker's pool does
    -- not (a lease lost in a crash only repeats an attempt): a result lost in one would
    -- leave its run running until the lease ran out, and overlap would judge the ticks
    -- that came due meanwhile by the attempt run again, skipping them. Its one row is
    -- there only when there are results, so `outcome` below evaluates it then.
    SELECT set_config('synchronous_commit', 'on', true) WHERE cardinality($2::bigint[]) > 0
), outcome AS (
    SELECT o.*
    FROM unnest($2::bigint[], $3::text[], $4::float8[], $5::text[], $6::jsonb[],
                $7::float8[], $11::float8[])
             AS o(id, status, delay_s, error, output, duration_ms, ended_ago_s),
         durable
), finished AS (
    UPDATE job_runs r
    SET status = o.status,
        next_attempt_at = CASE WHEN o.status = 'pending'
                               THEN now() + make_interval(secs => o.delay_s)
                               ELSE r.next_attempt_at END,
        finished_at = CASE WHEN o.status = 'pending' THEN NULL
                           ELSE now() - make_interval(secs => o.ended_ago_s) END,
        error = o.error, output = o.output, duration_ms = o.duration_ms,
        lease_expires_at = NULL
    FROM outcome o
    -- The ANY repeats the join so the rows are found by primary key whatever the
    -- planner's statistics say; "leased" is tested by lease_expires_at (equivalent,
    -- by a CHECK) rather than by status, which would tempt it into scanning the
    -- partial index of running runs when it wrongly believes that index is small.
    WHERE r.id = o.id AND r.id = ANY($2::bigint[])
      -- The days of those ids ($14, $15: store/history_ids.py reckons them as
      -- run_ids_day_start and run_ids_day_end would): job_runs is pruned to their
      -- partitions before it is read, and each row is compared with a value. The
      -- functions hold a query, which is not inlined: here they ran twice per row.
      AND r.scheduled_for >= $14::timestamptz
      AND r.scheduled_for < $15::timestamptz
      AND r.worker = $1 AND r.lease_expires_at IS NOT NULL
    RETURNING r.id, r.job_id, r.tenant, r.scheduled_for, o.status, o.error
), failing AS (
    -- The jobs whose run just failed, remembered so that their next success is a
    -- recovery; a success forgets its job (and is job.recovered if it was there).
    INSERT INTO jobs_failing (job_id)
    SELECT DISTINCT job_id FROM finished WHERE status = 'failed'
    ON CONFLICT (job_id) DO NOTHING
), recovered AS (
    DELETE FROM jobs_failing f
    USING finished s
    WHERE f.job_id = s.job_id AND s.status = 'succeeded'
    RETURNING s.id
), alerted AS (
    -- The outbox (SPEC §8): run.failed and job.recovered alerts, in the transaction of the
    -- outcome, for the jobs that want them ($13: SCHEDULER_ALERT_URL is set); any
    -- replica's alert sender delivers them (engine/alerts.py).
    INSERT INTO alerts (id, tenant, job_id, job_name, run_id, event, scheduled_for, url, body)
    SELECT history_id('alerts_id_seq', f.scheduled_for), f.tenant, f.job_id, j.name, f.id,
           e.event, f.scheduled_for, j.alerts ->> 'url',
           json_build_object('event', e.event, 'job_id', f.job_id, 'job_name', j.name,
                             'run_id', f.id, 'scheduled_for', f.scheduled_for,
                             'error', CASE WHEN e.event = 'run.failed' THEN f.error END)
    FROM (SELECT id, 'run.failed' AS event FROM finished WHERE status = 'failed'
          UNION ALL
          SELECT id, 'job.recovered' FROM recovered) e
    JOIN finished f ON f.id = e.id
    JOIN jobs j ON j.id = f.job_id
    WHERE alert_wanted(j.alerts, CASE e.event WHEN 'run.failed' THEN 'failed'
                                              ELSE 'recovered' END, $13)
    ON CONFLICT (job_id, scheduled_for, event) DO NOTHING
), due AS (
    SELECT id, NULL::text AS lost_worker FROM job_runs
    WHERE status = 'pending' AND next_attempt_at <= now()
      AND scheduled_for >= $16::timestamptz
      AND ($12::text[] IS NULL OR tenant = ANY($12::text[]))
    ORDER BY next_attempt_at
    LIMIT $8
    FOR UPDATE SKIP LOCKED
), expired AS (
    -- A lease is set exactly while a run is running (a CHECK says so).
    SELECT id, worker AS lost_worker FROM job_runs
    WHERE $10 AND lease_expires_at < now()
      AND scheduled_for >= $16::timestamptz
      -- Not one this statement records: a row cannot be updated twice in one statement.
      AND id <> ALL($2::bigint[])
      AND ($12::text[] IS NULL OR tenant = ANY($12::text[]))
    ORDER BY lease_expires_at
    LIMIT $8
    FOR UPDATE SKIP LOCKED
), candidates AS (
    -- Expired leases first: they have waited longest.
    (SELECT * FROM expired) UNION ALL (SELECT * FROM due) LIMIT $8
), claimed AS (
    UPDATE job_runs r
    SET status = 'running', attempt = r.attempt + 1, worker = $1, started_at = now(),
        finished_at = NULL, lease_expires_at = now() + make_interval(secs => j.timeout_s + $9)
    FROM candidates c, jobs j
    -- As above: found by primary key, whatever the planner believes.
    WHERE r.id = c.id AND r.id = ANY(ARRAY(SELECT id FROM candidates)) AND j.id = r.job_id
      -- Their days, reckoned once (as a filter the functions would run per row).
      AND r.scheduled_for >= $16::timestamptz
      AND r.scheduled_for >= (SELECT run_ids_day_start(array_agg(id)) FROM candidates)
      AND r.scheduled_for < (SELECT run_ids_day_end(array_agg(id)) FROM candidates)
    RETURNING r.id, r.job_id, r.tenant, r.scheduled_for, r.trigger, r.attempt, r.started_at,
              c.lost_worker, j.name, j.attributes, j.target, j.timeout_s, j.max_attempts,
              j.backoff_s, j.backoff_max_s, r.due_at
)
SELECT (SELECT coalesce(array_agg(id), '{}') FROM finished) AS finished,
       (SELECT since FROM unfinished_runs_floor) AS floor,
       (SELECT coalesce(json_agg(claimed), '[]')::text FROM claimed) AS claimed,
       -- One read of job_runs_waiting for all the jobs of the runs ended (a probe per run
       -- ended would read every partition's index once per run; a hash of every waiting
       -- run grows with a backlog).
       (SELECT coalesce(array_agg(f.id), '{}') FROM finished f
        WHERE f.status <> 'pending' AND f.job_id IN (
            SELECT w.job_id FROM job_runs w
            WHERE w.job_id = ANY(ARRAY(SELECT job_id FROM finished))
              AND w.status = 'pending' AND w.next_attempt_at IS NULL
              AND w.scheduled_for >= $16::timestamptz
        )) AS ended_with_waiters,
       CASE WHEN $10 THEN
           (SELECT coalesce(array_agg(s.job_id), '{}') FROM (
                -- Each job once, then one probe each: a backlog has many waiting runs a
                -- job. At most $8 jobs at a time, so that one decision stays small.
                SELECT w.job_id
                FROM (SELECT DISTINCT job_id FROM job_runs
                      WHERE status = 'pending' AND next_attempt_at IS NULL
                        AND scheduled_for >= $16::timestamptz
                        AND ($12::text[] IS NULL OR tenant = ANY($12::text[]))) w
                WHERE NOT EXISTS (
                    SELECT FROM job_runs r
                    WHERE r.job_id = w.job_id AND r.status IN ('pending', 'running')
                      AND r.next_attempt_at IS NOT NULL
                      AND r.scheduled_for >= $16::timestamptz
                    OFFSET 0
                )
                LIMIT greatest($8, 1)
            ) s)
       END AS stranded_jobs,
       extract(epoch FROM (SELECT next_attempt_at FROM job_runs
                           WHERE status = 'pending' AND next_attempt_at > now()
                             AND scheduled_for >= $16::timestamptz
                             AND ($12::text[] IS NULL OR tenant = ANY($12::text[]))
                           ORDER BY next_attempt_at LIMIT 1) - now())::float8
           AS next_attempt_in_s,
       CASE WHEN $10 THEN
           extract(epoch FROM (SELECT lease_expires_at FROM job_runs
                               WHERE lease_expires_at >= now()
                                 AND scheduled_for >= $16::timestamptz
                                 AND ($12::text[] IS NULL OR tenant = ANY($12::text[]))
                               ORDER BY lease_expires_at LIMIT 1) - now())::float8
       END AS next_lease_end_in_s;

-- runs_waiting_lock --
-- Lock the jobs of runs $1 and the jobs $2 for the caller's transaction: one decider of
-- a job's waiting runs at a time, and no scheduler pass adds to them meanwhile (it skips
-- a locked job). SKIP LOCKED: a job another executor is deciding, or a pass holds, is
-- left to it, and what is left undecided the next look at stranded runs finds (within
-- a second). Waiting for those locks instead made executors queue behind each other
-- for seconds once a replica fell behind, and fall further behind.
-- One IN over a UNION, not an OR of two: each side is an index read (an OR read all jobs).
-- [$3, $4): the days of runs $1 (store/history_ids.py, as for runs_exchange).
SELECT id FROM jobs
WHERE id IN (SELECT job_id FROM job_runs
             WHERE id = ANY($1::bigint[])
               AND scheduled_for >= $3::timestamptz AND scheduled_for < $4::timestamptz
             UNION ALL
             SELECT unnest($2::bigint[]))
ORDER BY id
FOR NO KEY UPDATE SKIP LOCKED;

-- runs_waiting_get --
-- What deciding the waiting runs of jobs $1 takes, as JSON: those runs, the runs of
-- those jobs that are pending or running, the runs $2 that just ended, and the run the
-- next in line of each job waits for (the others are judged by the runs that end:
-- overlap.settle_waiting); each with its job's misfire grace. And the database clock.
-- Three reads by index, united: the jobs' unfinished runs (job_runs_active), and the
-- other two by id in the partitions of their days, the bounds of those days reckoned
-- once. As one WHERE of three ORs the planner read every partition whole, the history
-- with it: a replica that fell behind spent most of the database's time here.
WITH unfinished AS (
    SELECT id, job_id, tenant, status, scheduled_for, ready_at, finished_at, waits_for,
           next_attempt_at IS NULL AS waiting, catch_up, coalesce(due_at, scheduled_for) AS due_at
    FROM job_runs
    WHERE job_id = ANY($1::bigint[]) AND status IN ('pending', 'running')
), wanted AS (
    SELECT ids, run_ids_day_start(ids) AS day_start, run_ids_day_end(ids) AS day_end
    FROM (SELECT $2::bigint[] || coalesce(array_agg(waits_for), '{}') AS ids
          FROM (SELECT DISTINCT ON (job_id) waits_for FROM unfinished
                WHERE status = 'pending' AND waiting
                ORDER BY job_id, scheduled_for, id) next_in_line
          WHERE waits_for IS NOT NULL) w
), runs AS (
    SELECT * FROM unfinished
    UNION
    SELECT r.id, r.job_id, r.tenant, r.status, r.scheduled_for, r.ready_at, r.finished_at,
           r.waits_for, r.next_attempt_at IS NULL, r.catch_up, coalesce(r.due_at, r.scheduled_for)
    FROM job_runs r, wanted w
    WHERE r.id = ANY(w.ids) AND r.scheduled_for >= w.day_start AND r.scheduled_for < w.day_end
)
SELECT coalesce(json_agg(r), '[]')::text, now()
FROM (
    SELECT r.*, j.misfire_grace_s
    FROM runs r
    JOIN jobs j ON j.id = r.job_id
) r;

-- runs_waiting_settle --
-- Decide waiting runs (overlap.settle_waiting), under runs_waiting_lock: each is
-- skipped (an earlier run was pending or running at its due time; the reason is $4),
-- released (claimable from now or from its due time, if later: its wait is over;
-- catch-up, $5), or waits on, for run $3. Wakes the executors when one was released. A
-- skipped one writes its job.missed alert, as runs_materialize does ($6: whether
-- SCHEDULER_ALERT_URL is set). [$7, $8): the days of runs $1 (store/history_ids.py).
WITH decided AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $5::boolean[])
        AS d(id, action, waits_for, catch_up)
), settled AS (
    UPDATE job_runs r
    SET status = CASE WHEN d.action = 'skip' THEN 'skipped' ELSE 'pending' END,
        error = CASE WHEN d.action = 'skip' THEN $4 END,
        finished_at = CASE WHEN d.action = 'skip' THEN now() END,
        next_attempt_at = CASE WHEN d.action = 'release' THEN greatest(now(), r.due_at) END,
        ready_at = CASE WHEN d.action = 'release' THEN greatest(now(), r.due_at) END,
        waits_for = d.waits_for,
        catch_up = d.catch_up
    FROM decided d
    WHERE r.id = d.id AND r.status = 'pending' AND r.next_attempt_at IS NULL
      AND r.scheduled_for >= $7::timestamptz AND r.scheduled_for < $8::timestamptz
    RETURNING d.action, r.id, r.job_id, r.scheduled_for, r.due_at
), missed AS (
    INSERT INTO alerts (id, tenant, job_id, job_name, run_id, event, scheduled_for, url, body,
                        next_attempt_at)
    SELECT history_id('alerts_id_seq', s.scheduled_for), j.tenant, s.job_id, j.name, s.id,
           'job.missed', s.scheduled_for, j.alerts ->> 'url',
           json_build_object('event', 'job.missed', 'job_id', s.job_id, 'job_name', j.name,
                             'run_id', s.id, 'scheduled_for', s.scheduled_for, 'error', $4),
           coalesce(s.due_at, s.scheduled_for) + alert_missed_after(j.alerts, j.timeout_s)
    FROM settled s
    JOIN jobs j ON j.id = s.job_id
    WHERE s.action = 'skip' AND alert_wanted(j.alerts, 'missed', $6)
    ON CONFLICT (job_id, scheduled_for, event) DO NOTHING
)
SELECT count(*) FILTER (WHERE action = 'release'),
       (SELECT pg_notify('scheduler_runs', '')
        WHERE EXISTS (SELECT FROM settled WHERE action = 'release'))
FROM settled;

-- runs_release --
-- At shutdown: hand runs that did not finish back as pending, due now, without
-- using up their attempt, and wake the other replicas' executors to take them.
-- [$3, $4): the days of runs $2 (store/history_ids.py).
WITH released AS (
    UPDATE job_runs
    SET status = 'pending', attempt = attempt - 1, next_attempt_at = now(),
        lease_expires_at = NULL, started_at = NULL
    WHERE id = ANY($2::bigint[]) AND worker = $1 AND lease_expires_at IS NOT NULL
      AND scheduled_for >= $3::timestamptz AND scheduled_for < $4::timestamptz
    RETURNING 1
)
SELECT pg_notify('scheduler_runs', '') FROM released LIMIT 1;

-- run_trigger --
-- A manual run of one of this tenant's jobs, due now, outside the schedule.
INSERT INTO job_runs (id, job_id, tenant, scheduled_for, trigger, status, next_attempt_at)
SELECT run_id(now()), id, tenant, now(), 'manual', 'pending', now()
FROM jobs
WHERE tenant = $1 AND id = $2
RETURNING *;

-- run_get --
-- One run of this tenant, looked for in the partition of its id's day only.
SELECT * FROM job_runs
WHERE tenant = $1 AND id = $2
  AND scheduled_for >= run_id_day_start($2) AND scheduled_for < run_id_day_end($2);

-- runs_list --
-- Up to $4 runs of one job, newest first, by keyset on id (below $3), from the ids of
-- one window of days: from $5 days before the cursor's day (or today's, without a
-- cursor) up to $6 days before it (NULL: up to the cursor). store.runs_list asks window
-- after window, each older than the last, until the page is full: a run's id tells its
-- day, so a window reads only the partitions of its days, and a page of a busy job reads
-- one or two, where one statement over every partition would read the newest rows of
-- each. The last window ($5 NULL) reads every partition: it alone holds the runs from
-- before partitioning, whose small ids (day 0) say nothing of their day; a cursor among
-- those leaves every other window empty.
SELECT * FROM job_runs
WHERE tenant = $1 AND job_id = $2
  AND id >= CASE WHEN $5::int IS NULL THEN 0
                 WHEN $3::bigint >> 37 = 0 THEN 9007199254740992
                 ELSE (run_id_cursor_day($3) - $5::int) << 37 END
  AND id < CASE WHEN $6::int IS NULL OR $3::bigint >> 37 = 0
                    THEN coalesce($3::bigint, 9007199254740992)
                ELSE (run_id_cursor_day($3) - $6::int) << 37 END
  -- The same window in ticks (exact: a run's tick is on its id's day), so that only its
  -- partitions are read.
  AND scheduled_for >= CASE WHEN $5::int IS NULL THEN '-infinity'
                            ELSE run_id_day_start((run_id_cursor_day($3) - $5::int) << 37) END
  AND scheduled_for < CASE WHEN $5::int IS NULL THEN 'infinity'
                           WHEN $3::bigint >> 37 = 0 THEN '-infinity'
                           WHEN $6::int IS NULL THEN run_id_day_end(coalesce($3::bigint, 0))
                           ELSE run_id_day_start((run_id_cursor_day($3) - $6::int) << 37) END
ORDER BY id DESC
LIMIT $4;

-- runs_prune --
-- Delete up to $2 finished runs whose tick is more than $1 days old, if this replica
-- holds the maintenance lock for this transaction (else nothing); return how many went.
-- Whole days go by history_partitions_detach: what is left for this are the runs of
-- job_runs_default, of job_runs_before_v5 (until the retention is past its last day),
-- and of a day kept for a run that had not finished. The partitions of later days are
-- not read (the tick bound prunes them). A replica without the lock reads no run: the
-- lock is a one-time filter, and the delete finds the doomed runs by id (as a hash join
-- it read every run of job_runs_default first, whether any was doomed or not).
WITH lock AS (
    SELECT pg_try_advisory_xact_lock($3) AS held
), doomed AS (
    SELECT r.id, r.scheduled_for FROM job_runs r
    WHERE (SELECT held FROM lock)
      -- Before the start of the first day kept (UTC): the days after it are dropped
      -- whole, not deleted row by row.
      AND r.scheduled_for < date_trunc('day', now() - make_interval(days => $1), 'UTC')
      -- job_runs_before_v5 has a BRIN index on created_at, no index on the tick.
      AND r.created_at < date_trunc('day', now() - make_interval(days => $1), 'UTC')
      AND r.status IN ('succeeded', 'failed', 'skipped', 'cancelled')
    LIMIT $2
), deleted AS (
    DELETE FROM job_runs r
    USING doomed d
    WHERE r.id = d.id AND r.scheduled_for = d.scheduled_for
      AND r.id = ANY(ARRAY(SELECT id FROM doomed))
      AND r.scheduled_for < date_trunc('day', now() - make_interval(days => $1), 'UTC')
    RETURNING 1
)
SELECT count(*) FROM deleted;

-- history_partitions_create --
-- Under the maintenance lock ($2; nothing without it), create the day partitions of
-- every history table that do not exist yet, from today to $1 days ahead; return how
-- many were made (NULL without the lock). lock_timeout as for history_partitions_detach.
WITH lock AS (
    SELECT pg_try_advisory_xact_lock($2) AS held, set_config('lock_timeout', '2s', true)
)
SELECT CASE WHEN lock.held THEN history_partitions_create($1) END FROM lock;

-- history_partitions_detach --
-- Under the maintenance lock ($2; nothing without it), detach the day partitions of
-- every history table that end more than $1 days ago; return their names (and those of
-- any detached before and not yet dropped), for history_partition_drop. lock_timeout:
-- detaching waits for every statement on the table to end and holds up the ones after
-- it, so it gives up rather than queue behind a long one (the next pass tries again).
WITH lock AS (
    SELECT pg_try_advisory_xact_lock($2) AS held, set_config('lock_timeout', '500ms', true)
)
SELECT coalesce(array_agg(detached), '{}')
FROM lock, LATERAL history_partitions_detach(
    CASE WHEN lock.held THEN now() - make_interval(days => $1) ELSE '-infinity' END
) AS detached;

-- history_partition_drop --
-- Drop a day partition that history_partitions_detach detached.
SELECT history_partition_drop($1);

-- ping --
-- Is this connection still alive? (The LISTEN connection asks now and then.)
SELECT 1;

-- api_key_insert --
-- Store a new API key (its SHA-256 only). A clash of the random prefix or hash
-- inserts nothing and returns no row; the caller draws another key.
INSERT INTO api_keys (prefix, key_hash, tenant, scopes)
VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
RETURNING prefix, key_hash, tenant, scopes, created_at, last_used_at, revoked_at;

-- api_key_get --
-- The key with this prefix, to check a presented key against its hash.
-- touch_due: last_used_at is older than $2 seconds (by the database clock), so
-- the caller should record this use; one write per key per interval, not per request.
SELECT prefix, key_hash, tenant, scopes, created_at, last_used_at, revoked_at,
       (last_used_at IS NULL
        OR last_used_at < now() - make_interval(secs => $2::double precision)) AS touch_due
FROM api_keys
WHERE prefix = $1;

-- api_key_touch --
-- Record that a key was used, unless another request or replica just did.
UPDATE api_keys
SET last_used_at = now()
WHERE prefix = $1
  AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2::double precision));

-- api_keys_list --
-- Every key, oldest first, for `scheduler-svc keys list` (hashes are not shown).
SELECT prefix, key_hash, tenant, scopes, created_at, last_used_at, revoked_at
FROM api_keys
ORDER BY created_at, id;

-- api_key_revoke --
-- Revoke a key from now on; revoking again keeps the first revocation time.
UPDATE api_keys
SET revoked_at = coalesce(revoked_at, now())
WHERE prefix = $1
RETURNING prefix, key_hash, tenant, scopes, created_at, last_used_at, revoked_at;

-- api_keys_exist --
-- Whether any key was ever created (revoked ones count): once one exists, the API
-- no longer serves anyone without a key.
SELECT EXISTS (SELECT 1 FROM api_keys);

-- wal_position --
-- Where the primary's WAL is written up to: after a write has committed, at or past
-- its commit record, so it is the write's read-your-writes token; and the mark a read
-- replica's replay position is measured against (store/replica.py).
SELECT pg_current_wal_lsn()::text;

-- replica_position --
-- Whether this server is a standby, the WAL position it has replayed up to (what its
-- queries see), and how many seconds ago the last transaction it replayed committed
-- (NULL before the first); the age keeps growing on a standby with nothing to replay.
SELECT pg_is_in_recovery() AS in_recovery,
       pg_last_wal_replay_lsn()::text AS replay_lsn,
       extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8
           AS replay_age_s;

-- Operator controls (lead): maintenance windows, bulk pause/resume.

-- jobs_window_resume --
-- Resume jobs whose maintenance window is over (locked by jobs_window_ended), each with
-- its next tick from now ($2; NULL and $3 'completed' when its schedule has none left),
-- as POST /jobs/{id}/resume would: the ticks inside the window are not run.
UPDATE jobs j
SET status = r.status, next_run_at = r.next_run_at, paused_until = NULL,
    updated_at = now(), version = j.version + 1
FROM unnest($1::bigint[], $2::timestamptz[], $3::text[]) AS r(id, next_run_at, status)
WHERE j.id = r.id AND j.paused_until <= now() AND j.status = 'paused'
RETURNING j.id;

-- ===== Alerts and tenant signing secrets (SPEC §8 alerts, §5): store/alerts.py, store/secrets.py =====

-- alerts_check_missed --
-- The missed-tick check (job.missed), by one replica at a time: whoever gets the
-- advisory lock ($2, $3: the key and the replica's tenant shard) for this transaction;
-- nothing without it. One alert per tick of a job alerted on `missed` ($1: whether
-- SCHEDULER_ALERT_URL is set, see alert_wanted) that has no succeeded run
-- alert_missed_after(...) after its due time ($5: now, NULL for the database clock) because
--   late_runs: its run is still pending (not started, retrying, or waiting for an earlier
--              run of its job: next_attempt_at NULL) or running. Only unfinished runs are
--              read (job_runs_active), never the history;
--   late_jobs: it has no run at all yet: its job's next tick is that late (the scheduler
--              is not keeping up). Only overdue active jobs are read (jobs_due); the tick's
--              due time is taken as late as its jitter allows.
-- Ticks alerted already (by this check, or by the executors and the scheduler pass, which
-- write overlap skips and outcomes) are passed over by alerts_once; a race ends on the
-- same index (ON CONFLICT DO NOTHING). Only tenants $4 (NULL: all). Returns whether the
-- lock was held, and the alerts made as JSON.
WITH lock AS (
    SELECT pg_try_advisory_xact_lock($2::int, $3::int) AS held
), late_runs AS (
    SELECT r.job_id, r.tenant, j.name, j.alerts, r.id AS run_id, r.scheduled_for,
           alert_missed_after(j.alerts, j.timeout_s) AS after,
           CASE WHEN r.status = 'running' THEN format('attempt %s is still running', r.attempt)
                WHEN r.next_attempt_at IS NULL
                    THEN 'it is waiting for an earlier run of the job to end'
                WHEN r.attempt = 0 THEN 'it has not started'
                ELSE format('attempt %s failed and it waits to retry: %s', r.attempt,
                            coalesce(r.error, 'no error recorded'))
           END AS why
    FROM lock, job_runs r
    JOIN jobs j ON j.id = r.job_id
    WHERE lock.held AND r.status IN ('pending', 'running') AND r.trigger = 'schedule'
      AND ($4::text[] IS NULL OR r.tenant = ANY($4::text[]))
      AND alert_wanted(j.alerts, 'missed', $1)
      AND coalesce(r.due_at, r.scheduled_for) + alert_missed_after(j.alerts, j.timeout_s)
          <= coalesce($5::timestamptz, now())
), late_jobs AS (
    SELECT j.id AS job_id, j.tenant, j.name, j.alerts, NULL::bigint AS run_id,
           j.next_run_at AS scheduled_for, alert_missed_after(j.alerts, j.timeout_s) AS after,
           'no run has been made for it yet' AS why
    FROM lock, jobs j
    WHERE lock.held AND j.status = 'active' AND j.next_run_at <= coalesce($5::timestamptz, now())
      AND ($4::text[] IS NULL OR j.tenant = ANY($4::text[]))
      AND alert_wanted(j.alerts, 'missed', $1)
      AND j.next_run_at + make_interval(secs => j.jitter_s)
          + alert_missed_after(j.alerts, j.timeout_s) <= coalesce($5::timestamptz, now())
), late AS (
    SELECT * FROM late_runs UNION ALL SELECT * FROM late_jobs
), made AS (
    INSERT INTO alerts (id, tenant, job_id, job_name, run_id, event, scheduled_for, url, body)
    SELECT history_id('alerts_id_seq', l.scheduled_for), l.tenant, l.job_id, l.name,
           l.run_id, 'job.missed', l.scheduled_for, l.alerts ->> 'url',
           jsonb_build_object(
               'event', 'job.missed', 'job_id', l.job_id, 'job_name', l.name,
               'run_id', l.run_id, 'scheduled_for', l.scheduled_for,
               'error', format('no succeeded run %s s after its due time: %s',
                               trim_scale(extract(epoch FROM l.after)), l.why))
    FROM late l
    -- OFFSET 0 keeps this a probe of alerts_once per late tick (in the partition of its
    -- day): as a join, the planner may read every job.missed alert kept.
    WHERE NOT EXISTS (
        SELECT FROM alerts a
        WHERE a.job_id = l.job_id AND a.scheduled_for = l.scheduled_for
          AND a.event = 'job.missed'
        OFFSET 0
    )
    ON CONFLICT DO NOTHING
    RETURNING id, job_id, run_id, scheduled_for
)
SELECT (SELECT held FROM lock) AS held,
       coalesce(json_agg(made), '[]')::text AS made
FROM made;

-- alerts_claim --
-- Lease up to $2 due pending alerts (SKIP LOCKED) to this sender for $1 seconds: their
-- next attempt moves to the lease's end, so a sender that dies while delivering one is
-- taken over then, and the attempt is counted now (a claim's attempts is its fencing
-- token: alert_record matches it). An alert for SCHEDULER_ALERT_URL (url NULL) is
-- claimed only by a sender that has it ($3), or, a day old, by any (to fail it). Only
-- tenants $4 (NULL: all).
WITH due AS (
    SELECT id FROM alerts
    WHERE status = 'pending' AND next_attempt_at <= now()
      AND ($4::text[] IS NULL OR tenant = ANY($4::text[]))
      AND (url IS NOT NULL OR $3 OR created_at < now() - interval '1 day')
    ORDER BY next_attempt_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE alerts a
SET attempts = a.attempts + 1, next_attempt_at = now() + make_interval(secs => $1)
-- Found by id in the partitions of their days only (history ids tell their day as run
-- ids do).
WHERE a.id = ANY(ARRAY(SELECT id FROM due))
  -- Their days, reckoned once (as a filter the functions would run per row).
  AND a.scheduled_for >= (SELECT run_ids_day_start(array_agg(id)) FROM due)
  AND a.scheduled_for < (SELECT run_ids_day_end(array_agg(id)) FROM due)
RETURNING a.id, a.tenant, a.job_id, a.job_name, a.run_id, a.event, a.scheduled_for, a.url,
          a.body, a.status, a.attempts, a.next_attempt_at, a.last_error, a.created_at,
          a.delivered_at;

-- alert_record --
-- What alert $1's attempt came to: 'delivered', 'failed', or 'pending' again after $4
-- seconds; $5 the attempt's error. Only if the alert is still at the claim's attempt $2
-- (else another sender took it over meanwhile, and its word stands): no row then.
UPDATE alerts
SET status = $3,
    next_attempt_at = CASE WHEN $3 = 'pending' THEN now() + make_interval(secs => $4) END,
    last_error = coalesce($5, last_error),
    delivered_at = CASE WHEN $3 = 'delivered' THEN now() END
WHERE id = $1 AND attempts = $2 AND status = 'pending'
  AND scheduled_for >= run_id_day_start($1) AND scheduled_for < run_id_day_end($1)
RETURNING id;

-- alerts_release --
-- At shutdown: give back alerts $1, leased at attempts $2 and not delivered, due now,
-- their attempt not used up. [$3, $4): the days of alerts $1 (store/history_ids.py).
UPDATE alerts a
SET attempts = a.attempts - 1, next_attempt_at = now()
FROM unnest($1::bigint[], $2::int[]) AS r(id, attempts)
WHERE a.id = r.id AND a.attempts = r.attempts AND a.status = 'pending'
  AND a.id = ANY($1::bigint[])
  AND a.scheduled_for >= $3::timestamptz AND a.scheduled_for < $4::timestamptz;

-- alerts_list --
-- Up to $4 of this tenant's alerts (of job $2, or NULL: of every job, deleted ones too),
-- newest first, by keyset on id (below $3). The partitions of days after the cursor's
-- are not read.
SELECT id, tenant, job_id, job_name, run_id, event, scheduled_for, url, body, status,
       attempts, next_attempt_at, last_error, created_at, delivered_at
FROM alerts
WHERE tenant = $1 AND ($2::bigint IS NULL OR job_id = $2)
  AND ($3::bigint IS NULL OR id < $3)
  AND scheduled_for < CASE WHEN $3::bigint IS NULL THEN 'infinity'
                           ELSE run_id_day_end($3) END
ORDER BY id DESC
LIMIT $4;

-- tenant_secret_get --
-- A tenant's webhook signing secrets: the current one, and the previous one while a
-- rotation is under way; no row: the tenant signs with SCHEDULER_WEBHOOK_SECRET.
SELECT secret, previous FROM tenant_secrets WHERE tenant = $1;

-- tenant_secret_rotate --
-- Give a tenant the signing secret $2: its first, or a new one, when the current one
-- becomes the previous (which drops any previous before it). `rotated`: it had one.
INSERT INTO tenant_secrets (tenant, secret) VALUES ($1, $2)
ON CONFLICT (tenant) DO UPDATE
SET previous = tenant_secrets.secret, secret = excluded.secret, rotated_at = now()
RETURNING tenant, rotated_at IS NOT NULL AS rotated;

-- tenant_secret_retire --
-- Stop signing with a tenant's previous secret. No row: the tenant has no secret;
-- `retired`: it had a previous one.
WITH old AS (
    SELECT tenant, previous FROM tenant_secrets WHERE tenant = $1 FOR UPDATE
)
UPDATE tenant_secrets t
SET previous = NULL
FROM old
WHERE t.tenant = old.tenant
RETURNING t.tenant, old.previous IS NOT NULL AS retired;

-- Run cancel (SPEC §8: POST /runs/{id}/cancel) ------------------------------------------

-- run_cancel --
-- Cancel one run of this tenant, looked for in the partition of its id's day, if it is
-- pending or running: it ends `cancelled` now and loses its lease, so a result its
-- executor sends later is dropped (runs_exchange records only runs still leased to it).
-- The row decides a race with that result: whichever commits first wins. Returns the
-- run as it is now and the status it had (`previous`); no row when it had ended already
-- or is not this tenant's (run_get tells which). Notifies scheduler_cancel with the run's
-- id when it was running (the replica holding it stops the attempt) or when runs of its
-- job wait for an earlier run to end (executors then look at leases at once, which is
-- where waiting runs left with nothing to wait for are decided).
WITH target AS (
    -- Locked first, so that a result or a lease committed meanwhile is seen: the status
    -- it had then is what the audit and the notification go by.
    SELECT id, scheduled_for, status FROM job_runs
    WHERE tenant = $1 AND id = $2
      AND scheduled_for >= run_id_day_start($2) AND scheduled_for < run_id_day_end($2)
      AND status IN ('pending', 'running')
    FOR UPDATE
), cancelled AS (
    UPDATE job_runs r
    SET status = 'cancelled', finished_at = now(), lease_expires_at = NULL,
        -- A stopped attempt's duration is how long it had run.
        duration_ms = CASE WHEN t.status = 'running'
                           THEN extract(epoch FROM now() - r.started_at)::float8 * 1000
                           ELSE r.duration_ms END
    FROM target t
    WHERE r.id = t.id AND r.scheduled_for = t.scheduled_for
      AND r.scheduled_for >= run_id_day_start($2) AND r.scheduled_for < run_id_day_end($2)
    RETURNING r.id, r.job_id, r.tenant, r.scheduled_for, r.trigger, r.status, r.attempt,
              r.next_attempt_at, r.started_at, r.finished_at, r.duration_ms, r.error,
              r.output, r.worker, r.lease_expires_at, r.created_at, r.due_at,
              t.status AS previous
)
SELECT c.*,
       (SELECT pg_notify('scheduler_cancel', c.id::text)
        WHERE c.previous = 'running' OR EXISTS (
            SELECT FROM job_runs w
            WHERE w.job_id = c.job_id AND w.status = 'pending' AND w.next_attempt_at IS NULL
        )) AS notified
FROM cancelled c;

-- runs_cancelled --
-- Which of runs $1 are cancelled: an executor asks about runs it held whose results were
-- not recorded, and about those it holds once its LISTEN connection is back (a NOTIFY
-- scheduler_cancel sent while it was down is lost). [$2, $3): the days of runs $1.
SELECT coalesce(array_agg(id), '{}') FROM job_runs
WHERE id = ANY($1::bigint[]) AND status = 'cancelled'
  AND scheduled_for >= $2::timestamptz AND scheduled_for < $3::timestamptz;

-- Audit trail, run search and index completion (SPEC §8, §10) ------------------------

-- audit_insert --
-- One audit row, in the transaction of the change it records. Its id and `at` both come
-- from the transaction's start (history_id(…, now())), so the id tells the day of `at`.
INSERT INTO audit (tenant, actor, action, job_id, run_id, changes, request_id)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- audit_insert_many --
-- One audit row per job of $4, with the changes $5 of the same position (a bulk call), in
-- one statement; ids in the order given.
INSERT INTO audit (tenant, actor, action, job_id, changes, request_id)
SELECT $1, $2, $3, a.job_id, a.changes, $6
FROM unnest($4::bigint[], $5::jsonb[]) WITH ORDINALITY AS a(job_id, changes, n)
ORDER BY a.n;

-- audit_list --
-- Up to $6 audit rows of this tenant, newest first, with ids in [$2, $3) and `at` in
-- [$4, $5) (NULL: unbounded): one window of days (store.audit.windows). An audit row's id
-- tells the day of its `at`, the partition key, so a window reads only its days'
-- partitions (by audit_tenant), and a page of a busy tenant one or two of them. The
-- bounds are plain parameters, so that the plan leaves out the other partitions before
-- it is made (a bound computed in SQL would leave them to the executor, after planning
-- every partition, which costs more than reading the page).
SELECT id, at, actor, action, job_id, run_id, changes, request_id FROM audit
WHERE tenant = $1 AND id >= $2 AND id < $3
  AND at >= coalesce($4::timestamptz, '-infinity') AND at < coalesce($5::timestamptz, 'infinity')
ORDER BY id DESC
LIMIT $6;

-- audit_list_job --
-- Up to $4 audit rows of job $2 of this tenant (deleted or not), newest first, below id
-- $3. One statement over every partition, by audit_job: a job has few rows, spread over
-- its life, so day windows would mostly read empty days one round trip at a time.
SELECT id, at, actor, action, job_id, run_id, changes, request_id FROM audit
WHERE job_id = $2 AND tenant = $1
  AND id < coalesce($3::bigint, 9007199254740992)
ORDER BY id DESC
LIMIT $4;

-- runs_search --
-- Up to $7 runs of this tenant with a status of $4, newest first, with ids in [$2, $3)
-- and ticks in [$5, $6) (NULL: unbounded): one window of days, as audit_list reads. Each
-- status is read by job_runs_search (tenant, status, id DESC) up to the page size and
-- the few rows merged: the tenant's runs of other statuses and days are never read,
-- whatever their number. `BETWEEN` and the order by status are what only that index
-- serves: with `status = …` the primary key's order would do too, and the planner, which
-- cannot know how rare a status is among the newest runs, chose to read a day's runs
-- backwards through it to find a few failures (11,114 rows read for none, measured).
SELECT r.* FROM unnest($4::text[]) AS s(status)
CROSS JOIN LATERAL (
    SELECT * FROM job_runs
    WHERE tenant = $1 AND status BETWEEN s.status AND s.status AND id >= $2 AND id < $3
      AND scheduled_for >= coalesce($5::timestamptz, '-infinity')
      AND scheduled_for < coalesce($6::timestamptz, 'infinity')
    ORDER BY status, id DESC
    LIMIT $7
) r
ORDER BY r.id DESC
LIMIT $7;

-- runs_search_job --
-- The same, of job $8 only: by job_runs_job_id (job_id, id DESC), its statuses filtered,
-- so that no more than the job's own runs are read (BETWEEN: as above, so that the
-- primary key is not read for the order instead).
SELECT * FROM job_runs
WHERE job_id BETWEEN $8 AND $8 AND tenant = $1 AND status = ANY($4::text[])
  AND id >= $2 AND id < $3
  AND scheduled_for >= coalesce($5::timestamptz, '-infinity')
  AND scheduled_for < coalesce($6::timestamptz, 'infinity')
ORDER BY job_id, id DESC
LIMIT $7;

-- indexes_lock --
-- Take the index builders' session advisory lock if no one holds it; whether it was taken.
SELECT pg_try_advisory_lock($1);

-- indexes_unlock --
-- Let the next replica build indexes.
SELECT pg_advisory_unlock($1);

-- indexes_incomplete --
-- The partitions that each partitioned index of this schema not yet valid has no index
-- of (one made ON ONLY its table, as migration 0007 makes job_runs_search; it becomes
-- valid once every partition has one attached). For each: the index, its schema, the
-- partition, the index's column names joined by "_" ("expr" for an expression: what
-- PostgreSQL names a partition's index by when it makes one through the parent), its
-- definition from USING on, whether it is unique, and the names of the partition's
-- indexes that belong to no partitioned index, valid and invalid (a build that stopped
-- half way leaves an invalid one; one that stopped before attaching, a valid one).
WITH parent AS (
    SELECT i.indexrelid, i.indrelid, i.indisunique, c.relname AS index_name,
           c.relnamespace::regnamespace::text AS schema,
           (SELECT string_agg(coalesce(a.attname, 'expr'), '_' ORDER BY k.n)
            FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
            LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           ) AS columns,
           substring(pg_get_indexdef(i.indexrelid) FROM ' USING (.*)$') AS definition
    FROM pg_index i
    JOIN pg_class c ON c.oid = i.indexrelid
    WHERE c.relkind = 'I' AND NOT i.indisvalid
      AND c.relnamespace = current_schema()::text::regnamespace
)
SELECT p.index_name, p.schema, part.relname::text AS partition, p.columns, p.definition,
       p.indisunique AS is_unique, loose.valid, loose.invalid
FROM parent p
JOIN pg_inherits h ON h.inhparent = p.indrelid
JOIN pg_class part ON part.oid = h.inhrelid
CROSS JOIN LATERAL (
    SELECT coalesce(array_agg(ci.relname::text) FILTER (WHERE x.indisvalid), '{}') AS valid,
           coalesce(array_agg(ci.relname::text) FILTER (WHERE NOT x.indisvalid), '{}') AS invalid
    FROM pg_index x JOIN pg_class ci ON ci.oid = x.indexrelid
    WHERE x.indrelid = part.oid AND NOT ci.relispartition
) loose
WHERE NOT EXISTS (
    SELECT FROM pg_inherits hi JOIN pg_index ci ON ci.indexrelid = hi.inhrelid
    WHERE hi.inhparent = p.indexrelid AND ci.indrelid = part.oid
)
ORDER BY p.index_name, part.relname;

-- older_releases_connected --
-- Whether a replica of a release before schema 7 has a session on this database: those
-- named theirs `scheduler-svc:<worker id>` (later ones: `scheduler-svc@<schema>:…`,
-- db.application_name). Such a release cannot read a run whose status it does not know
-- (`cancelled`): cancelling waits until the roll is over.
SELECT EXISTS (
    SELECT FROM pg_stat_activity
    WHERE datname = current_database()
      AND (application_name = 'scheduler-svc' OR application_name LIKE 'scheduler-svc:%')
);

-- autovacuum_on --
-- Whether the server vacuums by itself. jobs (a row rewritten every tick) and the day
-- partitions of job_runs (rows that change state within seconds) bloat without it, and
-- claims and exchanges slow down with the dead entries they walk: the worker warns.
SELECT current_setting('autovacuum') = 'on';

-- console_jobs_page --
-- A page of this tenant's jobs for the console, newest first, by keyset on id (below
-- $2): of status $3, named $4 (by jobs_tenant_name) and with every tag of $5 (by
-- jobs_tags): the filters of GET /jobs and of the bulk calls, so that "pause matching"
-- pauses what the page lists. NULL filters match everything. No last run here: the page
-- reads its jobs' recent runs with console_recent_runs.
SELECT id, name, schedule, timezone, status, next_run_at, paused_until, tags,
       coalesce(target->>'type', 'log') AS target_type
FROM jobs
WHERE tenant = $1
  AND ($2::bigint IS NULL OR id < $2)
  AND ($3::text IS NULL OR status = $3)
  AND ($4::text IS NULL OR name = $4)
  AND ($5::text[] IS NULL OR tags @> $5)
ORDER BY id DESC
LIMIT $6;

-- console_recent_runs --
-- The latest $3 runs of each job of $2 (this tenant's), oldest first: one index probe
-- of job_runs_job_id per job and partition, however long the jobs' histories.
SELECT j.id AS job_id,
       coalesce(array_agg(r.status ORDER BY r.id) FILTER (WHERE r.id IS NOT NULL), '{}')
           AS statuses,
       coalesce(array_agg(r.id ORDER BY r.id) FILTER (WHERE r.id IS NOT NULL), '{}') AS run_ids
FROM unnest($2::bigint[]) AS j(id)
LEFT JOIN LATERAL (
    SELECT id, status FROM job_runs
    WHERE job_id = j.id AND tenant = $1
    ORDER BY id DESC
    LIMIT $3
) r ON true
GROUP BY j.id;

-- console_failures --
-- This tenant's failed runs that ended since $2, grouped by the start of their error:
-- read newest first by job_runs_search (tenant, status, id DESC) from the ids and ticks
-- of day $3 on, at most $4 of them, so that a storm of failures costs a bounded read.
-- A run ticked before day $3 that failed since $2 (a long retry) is not counted.
SELECT left(coalesce(error, ''), 200) AS error, count(*)::int AS count,
       max(finished_at) AS last_at, max(id) AS last_run_id,
       count(DISTINCT job_id)::int AS jobs
FROM (
    SELECT error, finished_at, id, job_id FROM job_runs
    WHERE tenant = $1 AND status = 'failed'
      AND id >= $3::bigint << 37
      AND scheduled_for >= timestamptz '2000-01-01 00:00:00+00' + make_interval(days => $3::int)
    ORDER BY id DESC
    LIMIT $4
) recent
WHERE finished_at >= $2
GROUP BY 1
ORDER BY count DESC, last_at DESC
LIMIT 10;

-- console_running --
-- Up to $2 runs of this tenant under way, longest running first, by job_runs_leased
-- (only running runs hold a lease).
SELECT r.id, r.job_id, j.name AS job_name, r.started_at, r.worker, r.lease_expires_at
FROM job_runs r JOIN jobs j ON j.id = r.job_id
WHERE r.lease_expires_at IS NOT NULL AND r.tenant = $1
ORDER BY r.started_at NULLS LAST, r.id
LIMIT $2;

-- console_backlog --
-- Due ticks not yet started, as runs_due_backlog counts them, for tenant $1 (NULL: every
-- tenant), counted up to $2 each: the overview says "more than" past that rather than
-- count a large backlog on every render.
SELECT (SELECT count(*) FROM (
            SELECT FROM job_runs
            WHERE status = 'pending' AND (next_attempt_at <= now() OR next_attempt_at IS NULL)
              AND ($1::text IS NULL OR tenant = $1)
            LIMIT $2) p)
     + (SELECT count(*) FROM (
            SELECT FROM jobs
            WHERE status = 'active' AND next_run_at <= now()
              AND ($1::text IS NULL OR tenant = $1)
            LIMIT $2) j);

-- console_next_fires --
-- This tenant's $2 next ticks, by jobs_due.
SELECT id AS job_id, name, next_run_at, timezone FROM jobs
WHERE status = 'active' AND next_run_at IS NOT NULL AND tenant = $1
ORDER BY next_run_at
LIMIT $2;

-- console_replicas --
-- Replicas connected to this database now, by the application_name their pools give
-- their sessions (db.application_name): `scheduler-svc@<schema>:<worker>`, or before
-- schema 7 `scheduler-svc:<worker>`; a replica's console connection adds `/console`
-- (console/live.py) and counts as one of its sessions.
SELECT regexp_replace(substring(application_name FROM ':(.*)$'), '/console$', '') AS worker,
       substring(application_name FROM '^scheduler-svc@([0-9]+):')::int AS schema_version,
       count(*)::int AS sessions,
       min(backend_start) AS connected_since,
       min(host(client_addr)) AS client
FROM pg_stat_activity
WHERE datname = current_database() AND application_name ~ '^scheduler-svc(@[0-9]+)?:'
GROUP BY 1, 2
ORDER BY 1;

-- console_key_get --
-- The key that signs the console's session cookies, made by the first replica that asks
-- ($1: random bytes it offers); every replica then reads the same one.
WITH made AS (
    INSERT INTO console_keys (name, secret) VALUES ('session', $1)
    ON CONFLICT (name) DO NOTHING
    RETURNING secret
)
SELECT secret FROM made
UNION ALL
SELECT secret FROM console_keys WHERE name = 'session'
LIMIT 1;

-- run_minutes_add --
-- Add one replica's counts ($1: its worker id) to the console's rollup: a row per
-- tenant and minute of $2..$8, with its lag histogram the $10 counts at its place in $9
-- (a flat array: unnest would flatten an array of arrays). The replica's row of that
-- minute, written by an earlier flush, is added to, its histogram bucket by bucket; no
-- other replica writes it, so flushes never wait for each other.
INSERT INTO run_minutes AS m
    (tenant, minute, worker, succeeded, failed, skipped, cancelled, retried, lag_counts)
SELECT d.tenant, d.minute, $1, d.succeeded, d.failed, d.skipped, d.cancelled, d.retried,
       ($9::integer[])[(d.n - 1) * $10 + 1 : d.n * $10]
FROM unnest($2::text[], $3::timestamptz[], $4::integer[], $5::integer[], $6::integer[],
            $7::integer[], $8::integer[])
     WITH ORDINALITY AS d(tenant, minute, succeeded, failed, skipped, cancelled, retried, n)
ON CONFLICT (tenant, minute, worker) DO UPDATE SET
    succeeded = m.succeeded + excluded.succeeded,
    failed = m.failed + excluded.failed,
    skipped = m.skipped + excluded.skipped,
    cancelled = m.cancelled + excluded.cancelled,
    retried = m.retried + excluded.retried,
    -- Element by element; the shorter array (a row of a release with fewer buckets)
    -- counts as zeros past its end.
    lag_counts = ARRAY(
        SELECT coalesce(l.old, 0) + coalesce(l.new, 0)
        FROM unnest(m.lag_counts, excluded.lag_counts) WITH ORDINALITY AS l(old, new, i)
        ORDER BY l.i);

-- run_minutes_read --
-- Tenant $1's rollup from minute $2 on, one row per minute summed over the replicas
-- that counted it, histograms bucket by bucket; oldest first. Reads at most
-- (minutes × replicas) rows by the primary key.
WITH counted AS (
    SELECT minute, succeeded, failed, skipped, cancelled, retried, lag_counts
    FROM run_minutes
    WHERE tenant = $1 AND minute >= $2
), lags AS (
    SELECT c.minute, l.i, sum(l.count) AS count
    FROM counted c, unnest(c.lag_counts) WITH ORDINALITY AS l(count, i)
    GROUP BY c.minute, l.i
)
SELECT c.minute, sum(c.succeeded) AS succeeded, sum(c.failed) AS failed,
       sum(c.skipped) AS skipped, sum(c.cancelled) AS cancelled, sum(c.retried) AS retried,
       ARRAY(SELECT l.count FROM lags l WHERE l.minute = c.minute ORDER BY l.i) AS lag_counts
FROM counted c
GROUP BY c.minute
ORDER BY c.minute;

-- console_pulse --
-- What a replica's engine changed since its last pulse (engine/rollup.py): one
-- notification on scheduler_console per tenant, as schema.sql's jobs triggers send theirs.
SELECT count(pg_notify('scheduler_console', payload)) FROM unnest($1::text[]) AS payload;

-- run_minutes_prune --
-- Delete the rollup's rows of minutes more than $1 hours ago, if this replica holds the
-- maintenance lock $2 for this transaction (else nothing); how many went. The overview
-- reads the last hour; the rest is kept a while for a look back.
WITH lock AS (
    SELECT pg_try_advisory_xact_lock($2) AS held
), deleted AS (
    DELETE FROM run_minutes
    WHERE minute < now() - make_interval(hours => $1) AND (SELECT held FROM lock)
    RETURNING 1
)
SELECT count(*) FROM deleted;
