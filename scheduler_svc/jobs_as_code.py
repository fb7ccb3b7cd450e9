"""`scheduler-svc apply -f FILE` and `scheduler-svc export`: jobs kept in a file, sent to
the service through its HTTP API (scheduler_svc.client), as `terraform plan|apply` does.

apply checks the whole file (jobs_file), asks the service what a PUT of each job would
do (`PUT /jobs/by-key/{key}?dry_run=true`), and with `--prune` lists the jobs its
`--owner` manages that the file no longer has; it prints that plan, and unless
`--dry-run` carries it out. Any error in the file, or reported by the service's dry
run, is one line each, and then nothing is applied. Requests go 16 at a time (Lanes).

Exit codes: 0 success; 1 an error; 2 a bad command line. With `--detailed-exitcode`: 0
nothing to change, 2 changes applied (or planned, with `--dry-run`), 1 any error, a bad
command line included.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import msgspec

from scheduler_svc import jobs_file
from scheduler_svc.cli_api import cell
from scheduler_svc.client import DEFAULT_URL, AsyncClient, Client, ClientError, ProblemError
from scheduler_svc.client.core import MAX_PAGE_SIZE, PutPlan
from scheduler_svc.jobs_file import FileError, Item

COMMANDS = ("apply", "export")
DEFAULT_OWNER = "apply"
# Requests in flight at once: enough to keep an API replica and its database busy.
CONCURRENCY = 16
DETAILED_EXITCODE = "--detailed-exitcode"
T = TypeVar("T")


class ApplyError(Exception):
    """A failure of apply or export, as one or more lines for stderr (exit code 1)."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


def add_commands(commands: Any) -> None:
    """Add `apply` and `export` to the CLI's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"the service (SCHEDULER_URL, default {DEFAULT_URL})")
    common.add_argument(
        "--api-key", help="API key, sent as a bearer token (SCHEDULER_API_KEY is safer)"
    )
    common.add_argument(
        "--owner",
        default=DEFAULT_OWNER,
        help=f"the jobs' managed_by: what apply sets and prunes among, and export writes "
        f"(default {DEFAULT_OWNER!r})",
    )
    apply = commands.add_parser(
        "apply", parents=[common], help="create, update (and prune) jobs from a YAML file"
    )
    apply.add_argument(
        "-f", "--file", required=True, metavar="FILE", help="the jobs file ('-': stdin)"
    )
    apply.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    apply.add_argument(
        "--prune",
        action="store_true",
        help="delete the jobs --owner manages whose key is not in the file",
    )
    apply.add_argument(
        DETAILED_EXITCODE,
        action="store_true",
        help="exit 0 with nothing to change, 2 with changes (applied or planned), 1 on any error",
    )
    export = commands.add_parser(
        "export", parents=[common], help="write the jobs --owner manages as a jobs file"
    )
    export.add_argument("--key-prefix", metavar="PREFIX", help="only jobs whose key starts so")
    export.add_argument(
        "--any-owner", action="store_true", help="every job with a key, whoever manages it"
    )
    export.add_argument(
        "--schema", action="store_true", help="write the jobs file's JSON Schema instead"
    )


def wants_detailed_exitcode(argv: Sequence[str]) -> bool:
    """Whether a command line (perhaps one argparse refuses) is apply's with
    --detailed-exitcode, whose bad command lines exit 1, not argparse's 2."""
    words = [arg.partition("=")[0] for arg in argv]
    return "apply" in words and any(
        len(word) >= len("--de") and DETAILED_EXITCODE.startswith(word) for word in words
    )


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Carry out a parsed `apply` or `export`; its exit code. Errors go to stderr."""
    out = out or sys.stdout
    try:
        if args.command == "export":
            _export(args, out)
            return 0
        changes = _event_loop_run(_apply(args, out))
    except ApplyError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 1
    except (ClientError, ValueError) as exc:
        print(f"scheduler-svc: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `| head` stopped reading: the rest is not wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    return 2 if changes and args.detailed_exitcode else 0


def _event_loop_run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop where it is installed: a tenth or so less CPU a request."""
    try:
        import uvloop  # not installed on Windows
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


# --- apply -------------------------------------------------------------------------------


@dataclass
class Plan:
    """What apply is to do: by key, in the file's order (deletes sorted)."""

    creates: list[Item] = field(default_factory=list)
    updates: list[tuple[Item, list[str]]] = field(default_factory=list)
    unchanged: list[Item] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)

    @property
    def changes(self) -> int:
        """How many jobs it creates, updates or deletes."""
        return len(self.creates) + len(self.updates) + len(self.deletes)

    def lines(self) -> list[str]:
        """The plan for a person: a line per change, and the sums."""
        shown = [f"+ create {item.key}" for item in self.creates]
        shown += [
            f"~ update {item.key} (changed: {_names(changed)})" for item, changed in self.updates
        ]
        shown += [f"- delete {key}" for key in self.deletes]
        shown.append(
            f"Plan: {len(self.creates)} to create, {len(self.updates)} to update, "
            f"{len(self.deletes)} to delete, {len(self.unchanged)} unchanged."
        )
        return shown


async def _apply(args: argparse.Namespace, out: IO[str]) -> int:
    """apply: check, plan, print, carry out; how many changes there were (or are)."""
    name, text = _read(args.file)
    items, errors = jobs_file.load(text, os.environ)
    async with Lanes(args.url, args.api_key) as api:
        # The service checks what the file's checks passed too, so that one run shows
        # every error; without an answer, the file's own errors are still worth showing.
        try:
            plan, found = await make_plan(api, items, args.owner, prune=args.prune and not errors)
        except ClientError as exc:
            if not errors:
                raise
            unchecked = f"scheduler-svc: (the service did not check the rest: {exc})"
            raise _file_errors(name, errors, [" ".join(unchecked.split())]) from None
        errors = sorted([*errors, *found], key=lambda error: error.line or 0)
        if errors:
            raise _file_errors(name, errors)
        for line in plan.lines():
            print(line, file=out)
        if args.dry_run or not plan.changes:
            print("Nothing applied (--dry-run)." if args.dry_run else "Nothing to do.", file=out)
            return plan.changes
        await carry_out(api, plan, args.owner)
    print(
        f"Applied: {len(plan.creates)} created, {len(plan.updates)} updated, "
        f"{len(plan.deletes)} deleted.",
        file=out,
        flush=True,
    )
    return plan.changes


def body_of(item: Item, owner: str) -> dict[str, Any]:
    """What to PUT for a job of the file: its fields, the owner as managed_by, and the
    key again (the service refuses a PUT whose path names another)."""
    return {**item.body, "key": item.key, "managed_by": owner}


async def make_plan(
    api: Lanes, items: Sequence[Item], owner: str, *, prune: bool
) -> tuple[Plan, list[FileError]]:
    """What a PUT of each item would do, and (`prune`) which of `owner`'s jobs the file no
    longer has; the plan, and the errors the service found in items.

    `owner`'s jobs are listed first (a page per 500). An item equal in every field to its
    job there changes nothing, and costs no request; the service is asked about the rest
    (a dry-run PUT each), and about every item whose secrets the listing cannot show."""
    listed: dict[str, dict[str, Any]] = {}
    async for job in api.clients[0].list_jobs(managed_by=owner, page_size=MAX_PAGE_SIZE):
        if job.key is not None:  # a job without a key is never the file's, nor pruned
            listed[job.key] = msgspec.to_builtins(job)

    async def dry_run(item: Item, lane: AsyncClient) -> PutPlan | list[FileError]:
        shown = listed.get(item.key)
        if shown is not None and unchanged(item, owner, shown):
            return PutPlan(action="none", changed=[])
        try:
            return await lane.put_job_by_key(item.key, body_of(item, owner), dry_run=True)
        except ValueError as exc:  # a key the client will not send
            return [jobs_file.placed_server_error(item, "key", str(exc))]
        except ProblemError as exc:
            if exc.status not in {400, 409, 412, 422}:
                raise
            if not exc.errors:
                return [jobs_file.placed_server_error(item, "", exc.detail)]
            return [jobs_file.placed_server_error(item, e.field, e.message) for e in exc.errors]

    answers = await api.each([functools.partial(dry_run, item) for item in items])
    plan, errors = Plan(), []
    for item, answer in zip(items, answers, strict=True):
        if isinstance(answer, list):
            errors += answer
        elif answer.action == "create":
            plan.creates.append(item)
        elif answer.action == "update":
            plan.updates.append((item, answer.changed))
        else:
            plan.unchanged.append(item)
    if prune:
        keep = {item.key for item in items}
        plan.deletes = sorted(key for key in listed if key not in keep)
    return plan, errors


def unchanged(item: Item, owner: str, shown: Mapping[str, Any]) -> bool:
    """Whether a PUT of `item` (by `owner`) would leave the job the API shows as `shown`
    (plain data) as it is. False when that cannot be told: a secret header given in the
    clear is compared with the "***" shown for it, so only the service can judge it."""
    if "schedule" in item.body and "interval" in item.body:
        return False  # the service says whether they agree
    try:
        job = msgspec.convert(
            {**item.body, "key": item.key, "managed_by": owner}, jobs_file.KeyedJob
        )
    except msgspec.ValidationError:
        return False
    fields = msgspec.to_builtins(job)  # every field, its default when left out; no UNSET
    fields["schedule"] = str(fields.pop("schedule", None) or fields.pop("interval", "")).strip()
    fields.pop("interval", None)
    paused = fields.pop("paused", None)
    if paused is not None and paused != (shown.get("status") == "paused"):
        return False
    return all(name in shown and shown[name] == value for name, value in fields.items())


async def carry_out(api: Lanes, plan: Plan, owner: str) -> None:
    """PUT what the plan creates and updates, then DELETE what it prunes."""
    writes = [*plan.creates, *(item for item, _ in plan.updates)]

    async def put(item: Item, lane: AsyncClient) -> None:
        await lane.put_job_by_key(item.key, body_of(item, owner))

    async def delete(key: str, lane: AsyncClient) -> None:
        try:
            await lane.delete_job_by_key(key)
        except ProblemError as exc:
            if exc.status != 404:  # gone already: as wanted
                raise

    await api.each([functools.partial(put, item) for item in writes])
    await api.each([functools.partial(delete, key) for key in plan.deletes])


class Lanes:
    """CONCURRENCY clients of one service, one request in flight on each.

    One AsyncClient with as many requests in flight would do, but httpx's connection
    pool then costs more CPU than the request: at 16 requests in flight, 2.8 ms a request
    against 1.2 ms on 16 clients of one connection each (GET /healthz, uvloop)."""

    def __init__(self, url: str | None, api_key: str | None, count: int = CONCURRENCY) -> None:
        # One TLS context for all: making one loads the CA bundle, 50 ms each.
        verify = httpx.create_ssl_context()
        self.clients = [AsyncClient(url, api_key=api_key, verify=verify) for _ in range(count)]

    async def __aenter__(self) -> Lanes:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for client in self.clients:
            await client.aclose()

    async def each(self, calls: Sequence[Callable[[AsyncClient], Awaitable[T]]]) -> list[T]:
        """Await every call, each given a client of its own; their results in order.
        The first failure cancels the rest and is raised."""
        results: dict[int, T] = {}
        todo = iter(enumerate(calls))  # shared: each lane takes the next call when free

        async def lane(client: AsyncClient) -> None:
            for index, call in todo:
                results[index] = await call(client)

        try:
            async with asyncio.TaskGroup() as group:
                for client in self.clients[: len(calls)]:
                    group.create_task(lane(client))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return [results[index] for index in range(len(calls))]


def _read(name: str) -> tuple[str, str]:
    """The file's name as errors show it, and its text."""
    try:
        if name == "-":
            return "<stdin>", sys.stdin.read()
        return name, Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ApplyError([f"scheduler-svc: cannot read {name}: {exc}"]) from None


def _file_errors(name: str, errors: list[FileError], more: Sequence[str] = ()) -> ApplyError:
    lines = [error.format(name) for error in errors]
    count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
    return ApplyError([*lines, *more, f"scheduler-svc: {count} in {name}; nothing applied"])


def _names(changed: Iterable[str]) -> str:
    return ", ".join(cell(name) for name in changed) or "-"


# --- export ------------------------------------------------------------------------------


def _export(args: argparse.Namespace, out: IO[str]) -> None:
    """export: the jobs as a jobs file on `out` (or, `--schema`, the file's JSON Schema)."""
    if args.schema:
        out.write(jobs_file.schema_text())
        return
    with Client(args.url, api_key=args.api_key) as api:
        owner = None if args.any_owner else args.owner
        jobs = [
            msgspec.to_builtins(job)
            for job in api.list_jobs(managed_by=owner, page_size=MAX_PAGE_SIZE)
        ]
    prefix = args.key_prefix or ""
    kept = [job for job in jobs if job.get("key") and str(job["key"]).startswith(prefix)]
    out.write(jobs_file.dump(kept))
    out.flush()
