"""The FastAPI app: routes, errors as one clear line, the engine context, the job runner and
the webhook dispatcher started and stopped with the server.

Every error a caller can cause is a 4xx with `{"error": "..."}`; FastAPI's own
validation errors are rewritten to the same shape. OpenAPI is at /openapi.json and /docs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY
from starlette.exceptions import HTTPException

from mailprobe.config import Settings, get_settings
from mailprobe.engine.context import Context
from mailprobe.metrics import CONTENT_TYPE_LATEST, METRICS, MeteredThrottle, StateGauge, exposition
from mailprobe.serve import jobs, jobstore, page, single
from mailprobe.serve.config import ServeConfig
from mailprobe.serve.drain import DrainingThrottle
from mailprobe.serve.limits import BodyLimit, RateLimiter
from mailprobe.serve.runner import JobRunner
from mailprobe.serve.state import ApiError, ServeState
from mailprobe.serve.webhooks import Dispatcher
from mailprobe.throttle import make_throttle

log = logging.getLogger(__name__)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mailprobe")
    except PackageNotFoundError:
        return "unknown"


def create_app(settings: Settings | None = None, config: ServeConfig | None = None) -> FastAPI:
    """The app for `settings` (default: the environment's) and `config` (SERVE_*)."""
    settings = settings or get_settings()
    config = config or ServeConfig.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        throttle = DrainingThrottle(MeteredThrottle(make_throttle(settings)))
        ctx = Context.create(settings, throttle=throttle)
        webhooks = Dispatcher(ctx.store, config)
        runner = JobRunner(ctx, config, webhooks, throttle)
        state = ServeState(ctx, config, runner, webhooks, RateLimiter(config.rate_limit))
        app.state.serve = state
        gauge = StateGauge(
            "mailprobe_jobs", "HTTP API jobs, by state.", "state",
            lambda: jobstore.jobs_by_state(ctx.store),
        )  # fmt: skip
        REGISTRY.register(gauge)
        await asyncio.to_thread(ctx.load_behavior)
        await webhooks.start()
        await runner.start()
        try:
            yield
        finally:
            await runner.stop()
            for task in list(state.background):
                task.cancel()
            await webhooks.stop()
            REGISTRY.unregister(gauge)
            await ctx.aclose()

    app = FastAPI(
        title="mailprobe",
        version=_version(),
        summary="Tell whether an email address exists by asking its mail server "
        "(never sends mail).",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                    ) -> Response:  # fmt: skip
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        METRICS.http_requests.labels(path, str(response.status_code)).inc()
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if errors and errors[0].get("type") == "json_invalid":
            return JSONResponse({"error": "the body is not valid JSON"}, 400)
        shown = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in errors[:5]
        )
        return JSONResponse({"error": shown}, 422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, 500)

    app.include_router(single.router)
    app.include_router(jobs.router)
    app.include_router(page.router)

    @app.get("/healthz", tags=["meta"], summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["meta"], summary="The database (and Redis, when set) answer")
    async def readyz(request: Request) -> JSONResponse:
        state: ServeState = request.app.state.serve
        checks: dict[str, Any] = {}
        ok = True
        try:
            await asyncio.to_thread(state.ctx.store.check)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"], ok = str(exc), False
        if settings.redis_url:
            try:
                await asyncio.to_thread(_ping_redis, settings.redis_url)
                checks["redis"] = "ok"
            except Exception as exc:
                checks["redis"], ok = str(exc), False
        return JSONResponse({"status": "ok" if ok else "unavailable", **checks}, 200 if ok else 503)

    @app.get("/metrics", tags=["meta"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/version", tags=["meta"], summary="The server's version (as Reacher's /version)")
    async def version() -> dict[str, str]:
        return {"version": _version()}

    return app


def _ping_redis(url: str) -> None:
    from mailprobe.queue import redis_connection
    from mailprobe.redact import redact_url

    try:
        redis_connection(url).ping()
    except Exception as exc:
        raise RuntimeError(f"redis {redact_url(url)}: {exc}") from None
