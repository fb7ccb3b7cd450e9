"""The engine of one replica: the scheduler (due ticks → runs, `scheduler`), the
executors (runs → targets → results, `executor`), maintenance (retention, `maintenance`)
and the worker that owns their loops and LISTEN connection (`worker`).

Data flows one way: the scheduler's pass claims due jobs, materializes their ticks and
hands runs to this replica's executor through `scheduler.LocalExecutor`; the executor
records what came of them. May import `config`, `errors`, `models`, `logs`, `metrics`,
`schedule`, `store` and `targets`; never the API or security. Only `app` and `cli`
import it.
"""
