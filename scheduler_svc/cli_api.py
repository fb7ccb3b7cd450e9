"""`scheduler-svc jobs list|get|create|pause|resume|trigger|delete` and `scheduler-svc runs
list|get|cancel`: the HTTP API from a shell, through scheduler_svc.client.

Output is an aligned table when standard output is a terminal, else JSON lines (one
object per line, as the API shows it); `--json` and `--table` choose. An error is one
line on stderr, `scheduler-svc: 404 Not found: job 12 does not exist`, and exit code 1
(2 for a bad command line).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import msgspec

from scheduler_svc.client import DEFAULT_URL, Client, ClientError
from scheduler_svc.client.core import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from scheduler_svc.models import MAX_ID, JobOut, RunOut

COMMANDS = ("jobs", "runs")
# Names the API repeats for the old service's clients; a table shows each value once.
_ALIASES = frozenset({"interval", "lastRunTimestamp", "nextRunTimestamp"})
_WIDEST = 48  # characters of a table cell before it is cut


class UsageError(Exception):
    """A command line that cannot be carried out (exit code 2)."""


def add_commands(commands: Any) -> None:
    """Add `jobs` and `runs` to the CLI's subcommands."""
    common = _common_options()
    jobs = commands.add_parser("jobs", help="list, show, create, pause, resume, trigger, delete")
    actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="jobs, newest first")
    listing.add_argument("--status", choices=["active", "paused", "completed"])
    listing.add_argument("--name", help="only jobs of exactly this name")
    _paging(listing)
    actions.add_parser("get", parents=[common], help="one job").add_argument("id", type=_id)
    create = actions.add_parser("create", parents=[common], help="create a job from JSON")
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", "-d", metavar="JSON", help="the job, as a JSON object")
    source.add_argument("--file", "-f", metavar="FILE", help="a file holding it ('-': stdin)")
    create.add_argument(
        "--idempotency-key",
        help="repeat a create safely: the same key and job return the first job (default: "
        "a new key, so the command's own retries never make two)",
    )
    for action, text in [
        ("pause", "stop future ticks"),
        ("resume", "resume from now; missed ticks are not run"),
        ("trigger", "run once now, outside the schedule; prints the run"),
        ("delete", "delete the job and its runs"),
    ]:
        actions.add_parser(action, parents=[common], help=text).add_argument("id", type=_id)

    runs = commands.add_parser("runs", help="a job's runs; one run; cancel a run")
    actions = runs.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="a job's runs, newest first")
    listing.add_argument("job_id", type=_id, metavar="JOB_ID")
    _paging(listing)
    actions.add_parser("get", parents=[common], help="one run").add_argument("id", type=_id)
    cancel = actions.add_parser(
        "cancel", parents=[common], help="cancel a pending or running run; prints the run"
    )
    cancel.add_argument("id", type=_id)


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"the service (SCHEDULER_URL, default {DEFAULT_URL})")
    common.add_argument(
        "--api-key",
        help="API key, sent as a bearer token (SCHEDULER_API_KEY, which other users of "
        "this machine cannot see in the process list)",
    )
    output = common.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        dest="output",
        action="store_const",
        const="json",
        help="JSON lines, one object per line (default when stdout is not a terminal)",
    )
    output.add_argument(
        "--table",
        dest="output",
        action="store_const",
        const="table",
        help="an aligned table (default on a terminal)",
    )
    return common


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=_count(None), help="show at most this many")
    parser.add_argument(
        "--page-size",
        type=_count(MAX_PAGE_SIZE),
        default=DEFAULT_PAGE_SIZE,
        help=f"fetch this many per request, 1 to {MAX_PAGE_SIZE} (default {DEFAULT_PAGE_SIZE})",
    )


def _id(raw: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) <= MAX_ID:
        raise argparse.ArgumentTypeError(f"expected an id (a positive whole number), not {raw!r}")
    return int(raw)


def _count(most: int | None) -> Callable[[str], int]:
    def convert(raw: str) -> int:
        if not raw.isdigit() or int(raw) < 1 or (most is not None and int(raw) > most):
            top = f" to {most}" if most is not None else " or more"
            raise argparse.ArgumentTypeError(f"expected a whole number from 1{top}, not {raw!r}")
        return int(raw)

    return convert


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Carry out a parsed `jobs` or `runs` command; its exit code. Errors go to stderr."""
    out = out or sys.stdout
    table = args.output == "table" or (args.output is None and out.isatty())
    try:
        command = _COMMANDS[(args.command, args.action)]
        with Client(args.url, api_key=args.api_key) as api:
            command(api, args, _Printer(out, table))
    except UsageError as exc:
        return _fail(str(exc), 2)
    except (ClientError, ValueError) as exc:
        return _fail(str(exc), 1)
    except BrokenPipeError:  # `| head` stopped reading: the rest is not wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _fail(message: str, code: int) -> int:
    print(f"scheduler-svc: {' '.join(message.split())}", file=sys.stderr)
    return code


# --- the commands ------------------------------------------------------------------------


def _jobs_list(api: Client, args: argparse.Namespace, printer: _Printer) -> None:
    jobs = api.list_jobs(
        status=args.status, name=args.name, limit=args.limit, page_size=args.page_size
    )
    printer.rows(jobs, JOB_COLUMNS)


def _runs_list(api: Client, args: argparse.Namespace, printer: _Printer) -> None:
    runs = api.list_runs(args.job_id, limit=args.limit, page_size=args.page_size)
    printer.rows(runs, RUN_COLUMNS)


def _jobs_create(api: Client, args: argparse.Namespace, printer: _Printer) -> None:
    job = _job_json(args.data, "--data") if args.data is not None else _job_file(args.file)
    printer.one(api.create_job(job, idempotency_key=args.idempotency_key))


def _jobs_delete(api: Client, args: argparse.Namespace, printer: _Printer) -> None:
    api.delete_job(args.id)
    printer.note(f"deleted job {args.id}")


def _job_file(name: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--file: cannot read {name}: {exc}") from None
    return _job_json(text, f"--file {name}")


def _job_json(text: str, where: str) -> dict[str, Any]:
    try:
        job = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise UsageError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(job, dict):
        raise UsageError(f'{where}: expected a JSON object, {{"name": …, "schedule": …}}')
    return job


_COMMANDS: dict[tuple[str, str], Callable[[Client, argparse.Namespace, _Printer], None]] = {
    ("jobs", "list"): _jobs_list,
    ("jobs", "get"): lambda api, args, printer: printer.one(api.get_job(args.id)),
    ("jobs", "create"): _jobs_create,
    ("jobs", "pause"): lambda api, args, printer: printer.one(api.pause_job(args.id)),
    ("jobs", "resume"): lambda api, args, printer: printer.one(api.resume_job(args.id)),
    ("jobs", "trigger"): lambda api, args, printer: printer.one(api.trigger_job(args.id)),
    ("jobs", "delete"): _jobs_delete,
    ("runs", "list"): _runs_list,
    ("runs", "get"): lambda api, args, printer: printer.one(api.get_run(args.id)),
    ("runs", "cancel"): lambda api, args, printer: printer.one(api.cancel_run(args.id)),
}


# --- output --------------------------------------------------------------------------------

Column = tuple[str, Callable[[Any], Any]]

JOB_COLUMNS: Sequence[Column] = (
    ("ID", lambda job: job.id),
    ("NAME", lambda job: job.name),
    ("STATUS", lambda job: job.status),
    ("SCHEDULE", lambda job: job.schedule),
    ("TIMEZONE", lambda job: job.timezone),
    ("TARGET", lambda job: type(job.target).__struct_config__.tag),
    ("NEXT RUN", lambda job: job.next_run_at),
    ("LAST RUN", lambda job: job.last_run_at),
    ("LAST STATUS", lambda job: job.last_run_status),
)
RUN_COLUMNS: Sequence[Column] = (
    ("ID", lambda run: run.id),
    ("JOB", lambda run: run.job_id),
    ("STATUS", lambda run: run.status),
    ("TRIGGER", lambda run: run.trigger),
    ("SCHEDULED FOR", lambda run: run.scheduled_for),
    ("ATTEMPT", lambda run: run.attempt),
    ("DURATION", lambda run: None if run.duration_ms is None else f"{run.duration_ms:.0f} ms"),
    ("WORKER", lambda run: run.worker),
    ("ERROR", lambda run: run.error),
)


class _Printer:
    """Writes objects as JSON lines, or as a table for a person."""

    def __init__(self, out: IO[str], table: bool) -> None:
        self.out = out
        self.table = table

    def rows(self, items: Iterable[JobOut | RunOut], columns: Sequence[Column]) -> None:
        """A list: JSON lines as the pages arrive, or one table once all have."""
        if not self.table:
            for item in items:
                self._json(item)
            return
        cells = [[cell(get(item)) for _, get in columns] for item in items]
        if not cells:
            print("(none)", file=self.out)
            return
        header = [name for name, _ in columns]
        widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
        for row in [header, *cells]:
            line = "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True))
            print(line.rstrip(), file=self.out)

    def one(self, item: JobOut | RunOut) -> None:
        """One object: a JSON line, or a field per line."""
        if not self.table:
            self._json(item)
            return
        names = [name for name in item.__struct_fields__ if name not in _ALIASES]
        width = max(len(name) for name in names)
        for name in names:
            print(f"{name.ljust(width)}  {cell(getattr(item, name), None)}", file=self.out)

    def note(self, text: str) -> None:
        """A line for a person (a table's reader); JSON lines leave it out."""
        if self.table:
            print(text, file=self.out)

    def _json(self, item: JobOut | RunOut) -> None:
        print(msgspec.json.encode(item).decode(), file=self.out, flush=True)


def cell(value: Any, widest: int | None = _WIDEST) -> str:
    """A value as one line of printable text: times to the second in UTC, structures as
    JSON, control characters escaped (a job's name must not drive the terminal)."""
    if value is None:
        text = "-"
    elif isinstance(value, datetime):
        text = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        text = msgspec.json.encode(value).decode()
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if widest is not None and len(text) > widest:
        text = text[: widest - 1] + "…"
    return text
