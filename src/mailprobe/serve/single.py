"""One address answered at once: `POST /v1/verify` (our record) and `POST /v0/check_email`
(Reacher's request and response, see `reacher`).

The address goes through the bulk engine as a list of one, so a single check gets what
a list gets (the domain's catch-all check, greylisting waited out, the throttle's caps
shared with every job). A caller's `timeout` is kept: when it
runs out the answer is `unknown / timeout` at that moment, and the probe goes on in the
background to store its answer for the next caller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from mailprobe.address import InvalidAddress, ReservedDomain, parse_address
from mailprobe.engine.bulk import BulkOptions, BulkVerifier, ServiceLost
from mailprobe.engine.context import Context
from mailprobe.inputs import entry
from mailprobe.metrics import METRICS
from mailprobe.results import Answer, Outcome, answer_for, invalid_answer
from mailprobe.serve.auth import Caller, caller, state_of
from mailprobe.serve.reacher import to_reacher
from mailprobe.serve.records import single_record
from mailprobe.serve.state import ApiError, ServeState
from mailprobe.store import StoreError
from mailprobe.throttle import ThrottleError

log = logging.getLogger(__name__)
router = APIRouter()
MX_LOOKUP_WAIT = 2.0  # seconds the Reacher answer waits for the MX list it shows
REUSE_TTL = 3600.0  # seconds a stored final answer is given again (unless `force`)


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=1024, description="The address to check.")
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds to wait; then the answer is unknown / timeout."
    )
    transcript: bool = Field(default=False, description="Include the SMTP transcript.")
    force: bool = Field(default=False, description="Probe even if a fresh answer is stored.")


class ReacherProxy(BaseModel):
    host: str
    port: int
    username: str | None = None
    password: str | None = None


class ReacherRequest(BaseModel):
    """Reacher's CheckEmailRequest (backend/src/http/v0/check_email/post.rs); fields it has
    for other providers' methods (yahoo_verif_method...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    to_email: str = Field(default="", max_length=1024)
    from_email: str | None = None
    hello_name: str | None = None
    proxy: ReacherProxy | None = None
    smtp_timeout: dict[str, int] | float | None = None  # Rust Duration: {"secs", "nanos"}
    smtp_port: int | None = Field(default=None, ge=1, le=65535)


async def check(
    state: ServeState,
    email: str,
    timeout: float | None,
    port: int | None = None,
    *,
    force: bool = False,
) -> Answer:
    """The address's answer, or unknown / timeout when `timeout` runs out first."""
    ctx = state.ctx
    try:
        parse_address(email, special_use_allowed=ctx.settings.special_use_allowed)
    except ReservedDomain:
        pass  # answered reserved_domain by the engine, nothing sent
    except InvalidAddress as exc:
        answer = invalid_answer(email, str(exc), exc.reason)
        METRICS.answered(answer)
        return answer
    if timeout is not None and timeout > state.config.max_timeout:
        raise ApiError(422, f"timeout {timeout:g}: at most {state.config.max_timeout:g} seconds")
    if port is not None and port != ctx.settings.smtp_port:
        ctx = Context(
            dataclasses.replace(ctx.settings, smtp_port=port),
            ctx.store, ctx.mx_cache, ctx.behavior, ctx.throttle,
        )  # fmt: skip
    task = asyncio.create_task(_probe(ctx, email, force))
    state.keep(task)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if task not in done:
        return timed_out(email, timeout or 0.0)
    try:
        return task.result()
    except (ServiceLost, ThrottleError) as exc:
        raise ApiError(503, f"throttle unavailable: {exc}", {"Retry-After": "30"}) from None
    except StoreError as exc:
        raise ApiError(503, f"database error: {exc}", {"Retry-After": "30"}) from None


async def _probe(ctx: Context, email: str, force: bool) -> Answer:
    """The bulk engine for one line: the domain's catch-all check in the same session,
    greylisting waited out, the answer stored; the same answer a list would get."""
    got: list[Answer] = []
    options = BulkOptions(
        greylist_first_retry=ctx.settings.greylist_first_retry,
        greylist_max_delay=ctx.settings.greylist_max_delay,
        reuse_ttl=None if force else REUSE_TTL,
        reuse_unknown_ttl=0.0 if force else None,
    )
    line = entry(1, email, {}, ctx.settings.special_use_allowed)
    # The verifier directly, not `bulk.verify`: the server loaded the MX behaviour and
    # checked the throttle when it started, which `verify` would redo for every call.
    verifier = BulkVerifier(ctx, sink=lambda answered: got.append(answered.answer), options=options)
    await verifier.run([line])
    answer = got[0]
    METRICS.answered(answer)
    return answer


def timed_out(email: str, timeout: float) -> Answer:
    """The answer when the caller's timeout ran out: unknown / timeout, said plainly."""
    outcome = Outcome.failure(
        email,
        kind="timeout",
        stage="request",
        error=f"no answer within the request's timeout of {timeout:g} s; the probe goes on "
        "and its answer is stored for the next request",
    )
    return answer_for(outcome, attempts=0)


@router.post("/v1/verify", tags=["single"], summary="Check one address")
async def verify_one(
    body: VerifyRequest, request: Request, who: Annotated[Caller, Depends(caller)]
) -> dict[str, Any]:
    if not body.email.strip():
        raise ApiError(422, "email: give the address to check")
    answer = await check(state_of(request), body.email, body.timeout, force=body.force)
    return single_record(body.email, answer, transcript=body.transcript)


def _seconds(value: dict[str, int] | float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return float(value.get("secs", 0)) + value.get("nanos", 0) / 1e9 or None
    return float(value) if value > 0 else None


@router.post(
    "/v0/check_email",
    tags=["reacher"],
    summary="Check one address, in Reacher's request and response shape",
)
async def check_email(
    body: ReacherRequest, request: Request, who: Annotated[Caller, Depends(caller)]
) -> dict[str, Any]:
    if not body.to_email.strip():
        raise ApiError(400, "to_email field is required.")  # Reacher's own words
    if body.proxy is not None:
        raise ApiError(
            422,
            "proxy: mailprobe does not probe through a SOCKS proxy; it probes from this "
            "server's address (SMTP_SOURCE_ADDRESS). Remove the proxy field to go on.",
        )
    state = state_of(request)
    answer = await check(state, body.to_email, _seconds(body.smtp_timeout), body.smtp_port)
    records: list[str] = []
    domain = answer.email.rpartition("@")[2]
    if answer.outcome.stage != "input" and domain:
        try:
            found = await asyncio.wait_for(state.ctx.mx_cache.get(domain), MX_LOOKUP_WAIT)
            records = found.resolution.hosts
        except Exception as exc:  # the list is shown, not needed: the answer stands
            log.info("MX list of %s for the Reacher answer: %s", domain, exc)
    return to_reacher(body.to_email, answer, records)
