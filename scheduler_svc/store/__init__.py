"""The database: every statement of queries.sql behind one function of the same name, the
pool (`db`), the schema (schema.sql) and the embedded PostgreSQL (`embedded`).

`sql` loads queries.sql and holds the statements about the database itself; `jobs`,
`runs` and `keys` hold those on each table, one function per named block. The package
re-exports them, so callers write `store.jobs_claim_due(...)`. Values travel only as
$n parameters. May import `config`, `errors`, `models` and `schedule` (the overlap
types of waiting runs); it knows nothing of HTTP, the engine or targets.
"""

from scheduler_svc.store.jobs import (
    Advance,
    Recorded,
    Tick,
    job_delete,
    job_get,
    job_get_by_idempotency_key,
    job_insert,
    job_lock,
    job_update,
    jobs_claim_due,
    jobs_list,
    jobs_next_due,
    runs_materialize,
)
from scheduler_svc.store.keys import (
    api_key_get,
    api_key_insert,
    api_key_revoke,
    api_key_touch,
    api_keys_exist,
    api_keys_list,
)
from scheduler_svc.store.runs import (
    Exchange,
    run_get,
    run_trigger,
    runs_due_backlog,
    runs_exchange,
    runs_list,
    runs_prune,
    runs_release,
    runs_skip_pending,
    runs_waiting_get,
    runs_waiting_lock,
    runs_waiting_settle,
)
from scheduler_svc.store.sql import (
    QUERIES,
    Conn,
    Connection,
    db_now,
    load_queries,
    ping,
    schema_lock,
    schema_version_get,
)

__all__ = [
    "QUERIES",
    "Advance",
    "Conn",
    "Connection",
    "Exchange",
    "Recorded",
    "Tick",
    "api_key_get",
    "api_key_insert",
    "api_key_revoke",
    "api_key_touch",
    "api_keys_exist",
    "api_keys_list",
    "db_now",
    "job_delete",
    "job_get",
    "job_get_by_idempotency_key",
    "job_insert",
    "job_lock",
    "job_update",
    "jobs_claim_due",
    "jobs_list",
    "jobs_next_due",
    "load_queries",
    "ping",
    "run_get",
    "run_trigger",
    "runs_due_backlog",
    "runs_exchange",
    "runs_list",
    "runs_materialize",
    "runs_prune",
    "runs_release",
    "runs_skip_pending",
    "runs_waiting_get",
    "runs_waiting_lock",
    "runs_waiting_settle",
    "schema_lock",
    "schema_version_get",
]
