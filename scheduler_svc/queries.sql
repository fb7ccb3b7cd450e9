-- Every SQL statement of scheduler-svc but the schema (schema.sql). Each block is
-- named by a `-- name --` line, described by the comment lines after it, and run
-- by the store.py function of the same name. Values travel only as $n parameters;
-- the tenant is always one of them.

-- schema_lock --
-- Serialize schema application across replicas starting together; held until commit.
SELECT pg_advisory_xact_lock($1);

-- schema_version_get --
-- The schema version the database is at.
SELECT version FROM schema_version;

-- db_now --
-- The database clock, which decides due-ness (the transaction's start inside one).
SELECT now();

-- job_insert --
-- Create a job. With an Idempotency-Key that this tenant already used, nothing is
-- inserted and no row comes back: the caller then reads the first job by its key.
INSERT INTO jobs (tenant, name, attributes, schedule, timezone, target,
                  max_attempts, backoff_s, backoff_max_s, timeout_s,
                  misfire_policy, misfire_grace_s, overlap, status, next_run_at,
                  idempotency_key, request_hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
ON CONFLICT (tenant, idempotency_key) DO NOTHING
RETURNING *;

-- job_get --
-- One job of this tenant.
SELECT * FROM jobs WHERE tenant = $1 AND id = $2;

-- job_get_by_idempotency_key --
-- The job this tenant created with this Idempotency-Key, with the hash of that request.
SELECT * FROM jobs WHERE tenant = $1 AND idempotency_key = $2;

-- job_lock --
-- One job of this tenant, locked until the end of the caller's transaction
-- (a PATCH reads, merges and writes it without losing a concurrent change).
SELECT * FROM jobs WHERE tenant = $1 AND id = $2 FOR UPDATE;

-- jobs_list --
-- A page of this tenant's jobs, newest first, by keyset: ids below the cursor.
-- NULL filters match everything.
SELECT * FROM jobs
WHERE tenant = $1
  AND ($2::bigint IS NULL OR id < $2)
  AND ($3::text IS NULL OR status = $3)
  AND ($4::text IS NULL OR name = $4)
ORDER BY id DESC
LIMIT $5;

-- job_update --
-- Write every writable field of a job, with its new status and next tick, and bump
-- its version.
UPDATE jobs
SET name = $3, attributes = $4, schedule = $5, timezone = $6, target = $7,
    max_attempts = $8, backoff_s = $9, backoff_max_s = $10, timeout_s = $11,
    misfire_policy = $12, misfire_grace_s = $13, overlap = $14,
    status = $15, next_run_at = $16,
    updated_at = now(), version = version + 1
WHERE tenant = $1 AND id = $2
RETURNING *;

-- job_delete --
-- Delete a job; its runs go with it (ON DELETE CASCADE).
DELETE FROM jobs WHERE tenant = $1 AND id = $2
RETURNING id;

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
