"""Bulk jobs over HTTP: create (a JSON list, or a CSV / text / .xlsx upload read by the CLI's
column rules), progress, results streamed while the job runs, cancel.

The lifecycle is the one every verification service shares (create -> id -> poll counts
-> download filtered by verdict, optional callback; see the README's HTTP API section).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mailprobe.inputs import InputError, entry, read_addresses
from mailprobe.inputs.sniff import address_column, chosen_column, sniff
from mailprobe.serve import jobstore
from mailprobe.serve.auth import Caller, caller, state_of
from mailprobe.serve.jobstore import JobView, NewLine
from mailprobe.serve.records import VERDICTS, ResultsCSV, jsonl
from mailprobe.serve.state import ApiError, ServeState
from mailprobe.serve.webhooks import WebhookRefused, check_target, job_summary

router = APIRouter()
SNIFF_LINES = 20
UPLOAD_TYPES = ("text/csv", "text/plain", "text/tab-separated-values", "application/octet-stream")


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048)
    secret: str | None = Field(default=None, max_length=256)
    each: bool = Field(default=False, description="An event per address too.")


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    emails: list[str | dict[str, Any]] = Field(
        description='Addresses, or objects with an "email" key and other columns kept as given.'
    )
    name: str | None = Field(default=None, max_length=255)
    force: bool = Field(default=False, description="Probe again even if a fresh answer is stored.")
    webhook: WebhookRequest | None = None


def _lines_from_json(body: JobRequest, state: ServeState) -> list[NewLine]:
    if not body.emails:
        raise ApiError(400, "emails: the list is empty")
    if len(body.emails) > state.config.max_rows:
        raise _too_many(len(body.emails), state)
    allowed = state.ctx.settings.special_use_allowed
    lines = []
    for n, item in enumerate(body.emails, start=1):
        if isinstance(item, dict):
            found = next((k for k in item if k.strip().lower() == "email"), None)
            if found is None or not isinstance(item[found], str):
                raise ApiError(422, f'emails[{n - 1}]: an object needs an "email" string')
            raw = item[found]
            extra = {k: "" if v is None else str(v) for k, v in item.items() if k != found}
        else:
            raw, extra = item, {}
        parsed = entry(n, raw, extra, allowed)
        key = parsed.address.normalized if parsed.address else None
        lines.append(NewLine(n, raw, key, extra))
    return lines


def _json_columns(body: JobRequest) -> tuple[list[str], int | None]:
    """Objects' keys become the results CSV's columns ("email" first), as an upload's would."""
    names: dict[str, None] = {}
    for item in body.emails:
        if isinstance(item, dict):
            names.update((k, None) for k in item if k.strip().lower() != "email")
            if len(names) > 100:
                break
    return (["email", *names], 0) if names else ([], None)


def _too_many(count: int | str, state: ServeState) -> ApiError:
    return ApiError(
        413, f"{count} addresses: over the {state.config.max_rows} a job may hold (SERVE_MAX_ROWS)"
    )


def _read_upload(
    data: bytes, filename: str, column: str | None, state: ServeState
) -> tuple[list[NewLine], list[str], int | None]:
    """The upload's lines, header row and address column, by the CLI's reading rules."""
    suffix = os.path.splitext(filename)[1].lower() or ".csv"
    allowed = state.ctx.settings.special_use_allowed
    with tempfile.TemporaryDirectory(prefix="mailprobe-upload-") as folder:
        path = os.path.join(folder, f"upload{suffix}")
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            entries = read_addresses(path, allowed, column=column)
            lines: list[NewLine] = []
            for line in entries:
                if len(lines) >= state.config.max_rows:
                    raise _too_many(f"more than {state.config.max_rows}", state)
                key = line.address.normalized if line.address else None
                lines.append(NewLine(line.line_no, line.raw, key, dict(line.extra)))
        except InputError as exc:
            message = str(exc).replace(path, filename).replace("--column", "column")
            raise ApiError(400, message) from None
    if not lines:
        raise ApiError(400, f"{filename}: no addresses in the upload")
    columns: list[str] = []
    index: int | None = None
    if suffix not in {".xlsx", ".xlsm"}:
        sample = data[:65536].decode("utf-8", "replace").splitlines()[:SNIFF_LINES]
        shape = sniff(sample)
        if shape.headers is not None:
            columns = [h.strip().lstrip("\ufeff") for h in shape.headers]
            with contextlib.suppress(InputError):
                index = (
                    chosen_column(shape.headers, column)
                    if column
                    else address_column(shape.headers)
                )
    return lines, columns, index


async def _webhook(request: WebhookRequest | None, state: ServeState) -> jobstore.Webhook | None:
    if request is None:
        return None
    try:
        await check_target(request.url, state.config)
    except WebhookRefused as exc:
        raise ApiError(400, str(exc)) from None
    return jobstore.Webhook(request.url, request.secret, request.each)


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@router.post(
    "/v1/jobs",
    tags=["jobs"],
    status_code=201,
    summary="Create a bulk job",
    description="A JSON body (`JobRequest`), a CSV / text file as the body (Content-Type "
    "text/csv, options as query parameters), or a multipart form with a `file` field.",
)
async def create_job(request: Request, who: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
    state = state_of(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    columns: list[str] = []
    index: int | None = None
    if kind == "application/json":
        raw = await request.body()
        try:
            body = JobRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise ApiError(*_validation(exc)) from None
        lines = await asyncio.to_thread(_lines_from_json, body, state)
        columns, index = _json_columns(body)
        name, force, hook = body.name, body.force, await _webhook(body.webhook, state)
    elif kind == "multipart/form-data" or kind in UPLOAD_TYPES or kind == "":
        options: dict[str, Any] = dict(request.query_params)
        if kind == "multipart/form-data":
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, 'multipart upload: send the list as a "file" field')
            data = await upload.read()
            options.update({k: v for k, v in form.items() if isinstance(v, str)})
            options.setdefault("name", upload.filename or "upload.csv")
        else:
            data = await request.body()
        if not data.strip():
            raise ApiError(400, "the upload is empty")
        filename = os.path.basename(str(options.get("name") or "upload.csv"))
        lines, columns, index = await asyncio.to_thread(
            _read_upload, data, filename, options.get("column") or None, state
        )
        name, force = filename, _flag(options.get("force"))
        hook = None
        if options.get("webhook_url"):
            hook = await _webhook(
                WebhookRequest(
                    url=str(options["webhook_url"]),
                    secret=options.get("webhook_secret") or None,
                    each=_flag(options.get("webhook_each")),
                ),
                state,
            )
    else:
        raise ApiError(
            415,
            f"Content-Type {kind!r}: send application/json, text/csv or multipart/form-data",
        )
    job = await asyncio.to_thread(
        jobstore.create_job, state.ctx.store, lines, name=name, columns=columns,
        address_column=index, key_id=who.key_id, force=force, webhook=hook,
    )  # fmt: skip
    state.runner.wake()
    return shown(job, state)


def _validation(exc: ValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if errors and errors[0].get("type") == "json_invalid":
        return 400, f"the body is not valid JSON: {errors[0].get('msg')}"
    return 422, "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg')}"
        for e in errors[:5]
    )


def shown(job: JobView, state: ServeState) -> dict[str, Any]:
    """A job as GET /v1/jobs/{id} shows it: the summary, its rate and ETA, its webhook."""
    out = job_summary(job)
    rate = state.runner.rate(job.id, job.done) if job.status == "running" else None
    out["rate"] = round(rate, 2) if rate is not None else None
    left = job.total - job.done
    out["eta_seconds"] = round(left / rate) if rate and left > 0 else None
    out["webhook"] = (
        {
            "url": job.webhook.url,
            "each": job.webhook.each,
            "state": job.webhook_state,
            "deliveries": [d.as_dict() for d in job.deliveries],
        }
        if job.webhook
        else None
    )
    return out


async def _job(request: Request, who: Caller, job_id: str, deliveries: int = 0) -> JobView:
    state = state_of(request)
    job = await asyncio.to_thread(jobstore.get_job, state.ctx.store, job_id, deliveries=deliveries)
    if job is None or (who.key_id is not None and job.key_id not in (None, who.key_id)):
        raise ApiError(404, f"no job {job_id!r}")
    return job


@router.get("/v1/jobs", tags=["jobs"], summary="List jobs, newest first")
async def list_jobs(
    request: Request,
    who: Annotated[Caller, Depends(caller)],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    state = state_of(request)
    jobs = await asyncio.to_thread(jobstore.list_jobs, state.ctx.store, limit, who.key_id)
    return {"jobs": [shown(j, state) for j in jobs]}


@router.get("/v1/jobs/{job_id}", tags=["jobs"], summary="A job's progress and counts")
async def get_job(
    job_id: str, request: Request, who: Annotated[Caller, Depends(caller)]
) -> dict[str, Any]:
    return shown(await _job(request, who, job_id, deliveries=20), state_of(request))


@router.get(
    "/v1/jobs/{job_id}/results",
    tags=["jobs"],
    summary="The records answered so far, streamed (CSV keeps the uploaded columns)",
)
async def results(
    job_id: str,
    request: Request,
    who: Annotated[Caller, Depends(caller)],
    format: Annotated[str, Query(description="csv or jsonl")] = "csv",
    verdict: Annotated[str, Query(description="Verdicts to keep, comma-separated")] = "",
) -> StreamingResponse:
    if format not in {"csv", "jsonl"}:
        raise ApiError(400, f"format {format!r}: use csv or jsonl")
    wanted = [v.strip() for v in verdict.split(",") if v.strip()]
    bad = [v for v in wanted if v not in VERDICTS]
    if bad:
        raise ApiError(400, f"verdict {bad[0]!r}: use some of {', '.join(VERDICTS)}")
    job = await _job(request, who, job_id)
    store = state_of(request).ctx.store
    table = ResultsCSV(job.columns, job.address_column)

    async def body() -> AsyncIterator[str]:
        if format == "csv":
            yield table.header()
        pages = jobstore.results(store, job.id, verdicts=wanted)
        while True:
            page = await asyncio.to_thread(next, pages, None)
            if page is None:
                return
            if format == "csv":
                yield "".join(table.row(raw, extra, record) for raw, extra, record in page)
            else:
                yield "".join(jsonl(record, extra) for _, extra, record in page)

    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    filename = f"mailprobe-{job.id}.{format}"
    return StreamingResponse(
        body(), media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{filename}"',
                 "X-Job-Status": job.status},
    )  # fmt: skip


@router.delete("/v1/jobs/{job_id}", tags=["jobs"], summary="Cancel a job")
async def cancel_job(
    job_id: str, request: Request, who: Annotated[Caller, Depends(caller)]
) -> dict[str, Any]:
    job = await _job(request, who, job_id)
    state = state_of(request)
    if job.status in jobstore.FINISHED:
        raise ApiError(409, f"job {job_id} is {job.status}: nothing to cancel")
    await state.runner.cancel(job_id)
    return shown(await _job(request, who, job_id, deliveries=20), state)
