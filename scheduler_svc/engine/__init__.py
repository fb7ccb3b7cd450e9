"""The engine of one replica: the scheduler (due ticks → runs, `scheduler`), the
executors (runs → targets → results, `executor`; one attempt's outcome, `attempts`; runs
cancelled under them, `cancels`),
maintenance (retention, `maintenance`), the alert sender (the missed-tick check and
the alerts outbox, `alerts`), maintenance windows that end (`windows`) and the worker
that owns their loops and LISTEN connection (`worker`).

Data flows one way: the scheduler's pass claims due jobs, materializes their ticks and
hands runs to this replica's executor through `scheduler.LocalExecutor`; the executor
records what came of them. May import `audit` (a window's end is audited), `config`,
`errors`, `models`, `logs`, `metrics`, `schedule`, `store`, `targets` and `tracing` (the
attempt's span); never the API or security. Only `app` and `cli` import it.
"""
