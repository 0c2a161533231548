"""The web application: ``create_app(settings)`` wires the API, console and portal into one FastAPI app.

- Routers are discovered, never listed: every module of ``powergate.web.api`` with a module-level ``router``
  (a ``fastapi.APIRouter``) is included under ``/api/v1``, of ``powergate.web.console`` under ``/console`` and
  of ``powergate.web.portal`` under ``/portal`` (console and portal pages are left out of the OpenAPI
  document). Modules whose name starts with ``_`` are skipped. A module that fails to import fails the app:
  a missing page must not go unnoticed.
- ``/static`` serves ``powergate/web/static`` (``vendor/`` is filled by ``make assets`` from npm; nothing is
  loaded from a CDN). ``/api/docs`` is Swagger UI from those vendored files (or a plain page linking
  ``/api/openapi.json`` when the assets were not built).
- ``/healthz`` (database reachable, version), ``/metrics`` (Prometheus; loopback clients, or an API key /
  bearer token of a staff role), ``/`` -> ``/console/``, ``/login``, ``/logout``, ``/lang/{code}``.
- Every response carries security headers, including a Content-Security-Policy that allows scripts and styles
  from this site only (no inline ``<script>`` or ``style=""``); with ``cookie_secure`` every cookie is
  ``Secure``. Request bodies over ``settings.max_body_bytes`` answer 413.

``main_app()`` is the uvicorn factory (``uvicorn --factory powergate.web.app:main_app``) reading the settings
from ``POWERGATE_*`` environment variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
import logging
import pkgutil
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from powergate import __version__
from powergate.services import users as users_service
from powergate.store.db import make_engine
from powergate.web import api as api_package
from powergate.web import auth
from powergate.web import console as console_package
from powergate.web import portal as portal_package
from powergate.web.deps import STAFF, LoginRequired, get_engine, is_loopback, optional_principal
from powergate.web.idempotency import IDEMPOTENCY_TTL
from powergate.web.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from powergate.web.settings import WebSettings, from_environ

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
PURGE_EVERY_S = 600
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)
MOUNTS = ((api_package, "/api/v1", True), (console_package, "/console", False), (portal_package, "/portal", False))


def discover_routers(package: ModuleType) -> list[tuple[str, APIRouter]]:
    """``(module name, router)`` for every module of ``package`` with a module-level ``APIRouter`` named
    ``router``, in module-name order; modules whose name starts with ``_`` are skipped."""
    found: list[tuple[str, APIRouter]] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        router = getattr(module, "router", None)
        if isinstance(router, APIRouter):
            found.append((module.__name__, router))
    return found


class SecurityMiddleware:
    """Security headers on every response, ``Secure`` cookies when asked, and a limit on request bodies."""

    def __init__(self, app: ASGIApp, *, cookie_secure: bool, max_body_bytes: int) -> None:
        self.app = app
        self.cookie_secure = cookie_secure
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await self._too_large(send)
            return
        started = False
        refused = False
        received = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the app answers after we refused its body: nobody is listening any more
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", [])]
                present = {k.lower() for k, _ in headers}
                headers.extend((k, v) for k, v in SECURITY_HEADERS if k not in present)
                if self.cookie_secure:
                    headers = [
                        (k, v + b"; Secure") if k.lower() == b"set-cookie" and b"secure" not in v.lower() else (k, v)
                        for k, v in headers
                    ]
                message = {**message, "headers": headers}
            await send(message)

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes and not refused:
                    # A streamed body went over the limit: answer 413 now and tell the app the client left.
                    if not started:
                        await self._too_large(send_with_headers)
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, limited_receive, send_with_headers)

    async def _too_large(self, send: Send) -> None:
        response = JSONResponse(
            status_code=413, content={"detail": f"request body larger than {self.max_body_bytes} bytes"}
        )
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def create_app(settings: WebSettings) -> FastAPI:
    """The application for ``settings``: one SQLAlchemy engine (``app.state.engine``), the discovered routers,
    static files, health, metrics, security headers. The database must already be migrated
    (``powergate db upgrade``)."""
    engine = make_engine(settings.database_url, **dict(settings.engine_options))
    metrics = Metrics(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _purge_logged(app)
        purger = asyncio.create_task(_purge_forever(app))
        try:
            yield
        finally:
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
            # The engine outlives the lifespan (it is made with the app, and tests use it afterwards): return
            # its idle connections, and a later request opens new ones.
            engine.pool.dispose()

    app = FastAPI(
        title="PowerGate API",
        version=__version__,
        description="Prepaid energy metering: accounts, meters, tariffs, recharges, relay control. "
        "Authenticate with a bearer token (POST /api/v1/auth/token) or an X-API-Key; every POST that "
        "moves money or a relay needs an Idempotency-Key header.",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.metrics = metrics

    @app.exception_handler(LoginRequired)
    async def _login_required(_request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(exc.location, status_code=303)

    app.include_router(auth.router)
    app.include_router(auth.api_router)
    app.include_router(_core_router())
    for package, prefix, in_schema in MOUNTS:
        for _name, router in discover_routers(package):
            app.include_router(router, prefix=prefix, include_in_schema=in_schema)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(SecurityMiddleware, cookie_secure=settings.cookie_secure, max_body_bytes=settings.max_body_bytes)
    return app


def main_app() -> FastAPI:
    """Uvicorn factory: ``uvicorn --factory powergate.web.app:main_app`` (settings from the environment)."""
    return create_app(from_environ())


async def _purge_forever(app: FastAPI) -> None:
    """Delete expired sessions, old login failures and idempotency records every ``PURGE_EVERY_S`` (and once
    at start-up, before the first request)."""
    while True:
        await asyncio.sleep(PURGE_EVERY_S)
        await _purge_logged(app)


async def _purge_logged(app: FastAPI) -> None:
    try:
        await run_in_threadpool(_purge_once, app)
    except Exception:  # the database may be down for a moment; the next round tries again
        log.exception("purging expired sessions and idempotency keys failed; retrying later")


def _purge_once(app: FastAPI) -> dict[str, int]:
    settings: WebSettings = app.state.settings
    at: dt.datetime = settings.clock()
    with app.state.engine.begin() as conn:
        return users_service.purge_expired(conn, at, idempotency_ttl=IDEMPOTENCY_TTL)


# --- health, metrics, docs ------------------------------------------------------------------------------------


def _database_ok(request: Request) -> str | None:
    try:
        with get_engine(request).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # what went wrong is the answer
        return f"unreachable: {type(exc).__name__}"
    return None


def _core_router() -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/console/", status_code=303)

    @router.get("/healthz", tags=["health"], responses={503: {"description": "the database is unreachable"}})
    async def healthz(request: Request) -> JSONResponse:
        """Liveness and readiness: is the database reachable, and which version runs."""
        problem = await run_in_threadpool(_database_ok, request)
        body = {
            "status": "ok" if problem is None else "unavailable",
            "database": problem or "ok",
            "version": __version__,
        }
        return JSONResponse(status_code=200 if problem is None else 503, content=body)

    @router.get("/metrics", include_in_schema=False)
    async def metrics_endpoint(request: Request, who: Annotated[Any, Depends(optional_principal)]) -> Response:
        settings: WebSettings = request.app.state.settings
        open_here = is_loopback(request) and not settings.metrics_api_key_required
        if not open_here:
            if who is None:
                raise HTTPException(
                    status_code=401,
                    detail="metrics need an X-API-Key (or bearer token) of a staff role from outside the loopback",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if who.role not in STAFF:
                raise HTTPException(status_code=403, detail=f"role {who.role.value} may not read metrics")
        payload = await run_in_threadpool(request.app.state.metrics.render)
        return Response(content=payload, media_type=CONTENT_TYPE)

    @router.get("/api/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        vendored = (STATIC_DIR / "vendor" / "swagger-ui-bundle.js").is_file() and (
            STATIC_DIR / "vendor" / "swagger-ui.css"
        ).is_file()
        return HTMLResponse(_SWAGGER_PAGE if vendored else _PLAIN_DOCS_PAGE)

    return router


_SWAGGER_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>PowerGate API</title>
  <link rel="stylesheet" href="/static/vendor/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui" data-spec-url="/api/openapi.json"></div>
  <script src="/static/vendor/swagger-ui-bundle.js"></script>
  <script src="/static/core/swagger-init.js"></script>
</body>
</html>
"""

_PLAIN_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>PowerGate API</title></head>
<body>
  <h1>PowerGate API</h1>
  <p>The OpenAPI document is at <a href="/api/openapi.json">/api/openapi.json</a>.
  (Run <code>make assets</code> to serve the interactive Swagger UI here.)</p>
</body>
</html>
"""
