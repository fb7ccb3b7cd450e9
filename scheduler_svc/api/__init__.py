"""The HTTP API: routes (`routes`), the OpenAPI document's extras (`openapi`), the
depth check of request bodies (`bodies`), the rules of a job (`jobs`: validating
what clients send, deciding status and next_run_at, writing through the store), jobs
named by key and created or replaced by PUT (`by_key`), how rows are shown (`views`:
secrets masked) and history reads on the read replica with their read-your-writes
headers (`reads`); cancelling a run (`runs`); the audit trail and run search
(`audit`), paged as every list is (`paging`).

May import `audit` (the trail's rows), `config`, `errors`, `logs`, `metrics` (runs
cancelled are counted where answered), `models`, `redact`, `schedule`, `security`,
`store` and `targets` (the URL guard, the handler names); never the engine. Only `app`
imports it.
"""
