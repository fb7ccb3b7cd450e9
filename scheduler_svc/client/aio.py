"""`AsyncClient`: the HTTP API from asyncio code, as `Client` is from blocking code."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, overload

import httpx

from scheduler_svc.client import core
from scheduler_svc.client.core import PutPlan, RetryPolicy
from scheduler_svc.models import (
    JobCreate,
    JobOut,
    JobPatch,
    JobPut,
    JobStatus,
    RunOut,
    SchedulePreview,
)

T = TypeVar("T")


class AsyncClient:
    """An asyncio client of the scheduler-svc HTTP API, typed with the service's models:
    Client's methods, awaited, and its lists iterated with `async for`.

        from scheduler_svc.client import AsyncClient, ProblemError

        async with AsyncClient("http://127.0.0.1:3000", api_key="sch_…") as api:
            job = await api.create_job({"name": "nightly", "schedule": "0 3 * * *"})
            async for job in api.list_jobs(status="active"):
                print(job.id, job.name, job.next_run_at)

    `base_url` defaults to SCHEDULER_URL, else http://127.0.0.1:3000; `api_key` to
    SCHEDULER_API_KEY (sent as `Authorization: Bearer <key>`; pass "" to send none).
    Every error answer raises ProblemError; no answer at all (after retries) raises
    Unreachable; both are ClientErrors. Calls that are safe to repeat are retried on
    connection errors and 503 as `retry` says (see RetryPolicy). `timeout_s` bounds
    each attempt's connect, read and write. `verify` checks an https service's
    certificate against the usual CAs (True), an SSLContext's, or not at all (False).
    `transport` replaces httpx's (for tests, or a Unix socket).
    Close it (`aclose`), or use it as an async context manager.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout_s: float = core.DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.base_url = core.base_url(base_url)
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=core.auth_headers(api_key),
            timeout=timeout_s,
            transport=transport,
            verify=verify,
        )

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- jobs ----------------------------------------------------------------------------

    def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        name: str | None = None,
        key: str | None = None,
        managed_by: str | None = None,
        limit: int | None = None,
        page_size: int = core.DEFAULT_PAGE_SIZE,
    ) -> AsyncIterator[JobOut]:
        """Every job, newest first, fetching page after page as you iterate.

        `status` ("active", "paused" or "completed"), `name`, `key` and `managed_by`
        (each exact) filter; `limit` stops after that many jobs; `page_size` (1 to 500) is
        how many each request asks for. Jobs created while you iterate are not included;
        none is yielded twice.
        """
        params = {"status": status, "name": name, "key": key, "managed_by": managed_by}
        return self._pages("/jobs", params, JobOut, limit, page_size)

    async def get_job(self, job_id: int) -> JobOut:
        """The job `job_id`; ProblemError 404 if there is none (in your tenant)."""
        return await self._decoded(core.call("GET", core.job_path(job_id)), JobOut)

    async def create_job(
        self, job: JobCreate | Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> JobOut:
        """Create a job from a JobCreate or a dict of the API's fields; the job created.

        `name` and `schedule` are required: cron (5 or 6 fields), a macro such as
        `@daily`, `@every 1h30m`, or `@at <RFC 3339 time>`; see JobCreate for the rest
        (`timezone`, `target`, `max_attempts`, `timeout_s`, `paused`, ...). The request
        carries `idempotency_key` (a new random one when not given), so a retry after a
        lost answer returns the same job instead of making a second one; sending the
        same key with another body is a ProblemError 409. An invalid job is a
        ProblemError 400 whose `errors` name each bad field.
        """
        key = idempotency_key or str(uuid.uuid4())
        request = core.call("POST", "/jobs", json=job, headers={"Idempotency-Key": key})
        return await self._decoded(request, JobOut)

    async def update_job(
        self,
        job_id: int,
        changes: JobPatch | Mapping[str, Any],
        *,
        if_match: int | None = None,
    ) -> JobOut:
        """Change the fields given in `changes` (a JobPatch or a dict); the job after.

        A new schedule, time zone or `paused` replans the job from now. With `if_match`
        (the `version` you read) the change is refused with ProblemError 412 if the job
        changed since. Tried once: not repeated on errors.
        """
        request = core.call(
            "PATCH", core.job_path(job_id), json=changes, headers=core.if_match(if_match)
        )
        return await self._decoded(request, JobOut)

    async def delete_job(self, job_id: int) -> None:
        """Delete the job and its run history; ProblemError 404 if there is none.

        Retried on connection errors: if an earlier attempt did delete it, the call ends
        in that 404.
        """
        await self._send(core.call("DELETE", core.job_path(job_id)))

    async def pause_job(self, job_id: int) -> JobOut:
        """Stop future ticks (its scheduled runs not yet started are skipped); the job."""
        return await self._decoded(core.call("POST", core.job_path(job_id, "pause")), JobOut)

    async def resume_job(self, job_id: int) -> JobOut:
        """Resume from now (ticks missed while paused are not run); the job."""
        return await self._decoded(core.call("POST", core.job_path(job_id, "resume")), JobOut)

    async def trigger_job(self, job_id: int) -> RunOut:
        """Run the job once now, outside its schedule (paused or completed jobs too); the
        new run, `pending`. Not repeated on errors: each call is one more run."""
        return await self._decoded(core.call("POST", core.job_path(job_id, "trigger")), RunOut)

    # --- jobs by key ----------------------------------------------------------------------

    @overload
    async def put_job_by_key(
        self,
        key: str,
        job: JobPut | Mapping[str, Any],
        *,
        dry_run: Literal[False] = False,
        if_match: int | None = None,
    ) -> JobOut: ...

    @overload
    async def put_job_by_key(
        self,
        key: str,
        job: JobPut | Mapping[str, Any],
        *,
        dry_run: Literal[True],
        if_match: int | None = None,
    ) -> PutPlan: ...

    async def put_job_by_key(
        self,
        key: str,
        job: JobPut | Mapping[str, Any],
        *,
        dry_run: bool = False,
        if_match: int | None = None,
    ) -> JobOut | PutPlan:
        """Create the job with this key, or replace it; the job after.

        `job` holds every field but the key (those left out take their defaults), except
        that leaving out `paused` keeps the job's status and a header sent as "***"
        keeps its stored secret. Sending what is stored already changes nothing (no new
        version). With `dry_run` nothing is written and the answer is a PutPlan saying
        what would be. With `if_match` a replace is refused with ProblemError 412 if the
        job is at another version. Retried like a GET: the same PUT twice is one change.
        """
        request = core.call(
            "PUT",
            core.key_path(key),
            params={"dry_run": True} if dry_run else None,
            json=job,
            headers=core.if_match(if_match),
        )
        if dry_run:
            return await self._decoded(request, PutPlan)
        return await self._decoded(request, JobOut)

    async def get_job_by_key(self, key: str) -> JobOut:
        """The job with this key; ProblemError 404 if there is none (in your tenant)."""
        return await self._decoded(core.call("GET", core.key_path(key)), JobOut)

    async def update_job_by_key(
        self, key: str, changes: JobPatch | Mapping[str, Any], *, if_match: int | None = None
    ) -> JobOut:
        """update_job, for the job with this key."""
        request = core.call(
            "PATCH", core.key_path(key), json=changes, headers=core.if_match(if_match)
        )
        return await self._decoded(request, JobOut)

    async def delete_job_by_key(self, key: str) -> None:
        """delete_job, for the job with this key."""
        await self._send(core.call("DELETE", core.key_path(key)))

    # --- runs ----------------------------------------------------------------------------

    def list_runs(
        self, job_id: int, *, limit: int | None = None, page_size: int = core.DEFAULT_PAGE_SIZE
    ) -> AsyncIterator[RunOut]:
        """Every run of the job, newest first, fetching pages as you iterate; `limit` and
        `page_size` as for list_jobs. ProblemError 404, on the first step, if there is no
        such job."""
        return self._pages(core.job_path(job_id, "runs"), {}, RunOut, limit, page_size)

    async def get_run(self, run_id: int) -> RunOut:
        """The run `run_id`; ProblemError 404 if there is none."""
        return await self._decoded(core.call("GET", f"/runs/{int(run_id)}"), RunOut)

    async def cancel_run(self, run_id: int) -> RunOut:
        """Cancel the run if it is pending or running; the run, `cancelled` (an attempt
        under way is stopped and not retried). ProblemError 409 if it had already ended
        (`error.problem.run_status` says how), 404 if there is none. Not repeated on
        errors."""
        return await self._decoded(core.call("POST", core.run_path(run_id, "cancel")), RunOut)

    # --- schedules -----------------------------------------------------------------------

    async def preview_schedule(
        self,
        schedule: str,
        *,
        timezone: str = "UTC",
        after: datetime | None = None,
        count: int = 5,
    ) -> list[datetime]:
        """The next `count` (1 to 100) fire times, in UTC, of `schedule` read in `timezone`,
        after `after` (an aware datetime; default now). A bad schedule or zone is a
        ProblemError 400."""
        params = {"schedule": schedule, "timezone": timezone, "count": count}
        if after is not None:
            if after.tzinfo is None:
                raise ValueError("after must be an aware datetime (with a time zone)")
            params["after"] = after.isoformat()
        request = core.call("GET", "/schedules/preview", params=params)
        return (await self._decoded(request, SchedulePreview)).times

    # --- any route -----------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """Send any request to the API (`path` below the base URL) with this client's key,
        retries and errors; the successful response. `json` (plain data or a Struct) is
        the body. Retried only if `idempotent`, which defaults to true for GET, PUT and
        DELETE and for a request with an Idempotency-Key header."""
        request = core.call(
            method, path, params=params, json=json, headers=headers, idempotent=idempotent
        )
        return await self._send(request)

    # --- the machinery -------------------------------------------------------------------

    async def _send(self, call: core.Call) -> httpx.Response:
        """Send `call`, again while the retry policy allows; the success, or raise."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    params=call.params or None,
                    content=call.body,
                    headers=call.headers,
                )
            except httpx.TransportError as exc:
                delay = core.retry_delay(self.retry, call, attempt, exc)
                if delay is None:
                    url = self._http.base_url
                    raise core.unreachable(url, exc, attempt) from exc
                await asyncio.sleep(delay)
                continue
            delay = core.retry_delay(self.retry, call, attempt, response)
            if delay is None:
                return core.checked(response)
            await asyncio.sleep(delay)

    async def _decoded(self, call: core.Call, type_: type[T]) -> T:
        return core.decoded(await self._send(call), type_)

    def _pages(
        self,
        path: str,
        params: dict[str, Any],
        type_: type[T],
        limit: int | None,
        page_size: int,
    ) -> AsyncIterator[T]:
        first = {**params, "limit": core.page_size(page_size, limit)}
        return self._iterate(core.call("GET", path, params=first), type_, limit)

    async def _iterate(
        self, call: core.Call, type_: type[T], limit: int | None
    ) -> AsyncIterator[T]:
        left = limit
        while left != 0:
            response = await self._send(call)
            for item in core.decoded_list(response, type_):
                yield item
                if left is not None:
                    left -= 1
                    if left == 0:
                        return
            query = core.next_page(response)
            if query is None:
                return
            call = core.call("GET", call.path, params=query)
