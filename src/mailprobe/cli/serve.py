"""`mailprobe serve` (the HTTP API and web page) and `mailprobe apikey create|list|revoke`."""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import TYPE_CHECKING, Annotated

import typer

from mailprobe.cli.common import PORT, app, fail, settings

if TYPE_CHECKING:
    from mailprobe.store import Store

apikey_app = typer.Typer(
    help="API keys of `mailprobe serve` (stored hashed).", no_args_is_help=True
)
app.add_typer(apikey_app, name="apikey")

SERVE_EXTRA = "mailprobe serve needs the serve extra: pip install 'mailprobe[serve]'"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    """Say so in one line when the address cannot be listened on (uvicorn would log a
    traceback-like error and exit 1)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        why = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise fail(f"cannot listen on {host}:{port}: {why}") from None


def _store() -> Store:
    from mailprobe.store import StoreError, open_store

    try:
        return open_store(settings().database_url)
    except StoreError as exc:
        raise fail(f"database error: {exc}") from None


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", **PORT, help="TCP port.")] = 8025,
    no_auth: Annotated[
        bool,
        typer.Option("--no-auth", help="Serve without API keys, even on a public address."),
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level.")] = "info",
) -> None:
    """Serve the HTTP API, its web page at / and /metrics (OpenAPI at /docs).

    With no API key (`mailprobe apikey create`) the server listens on loopback only;
    a public --host then needs --no-auth, said explicitly."""
    try:
        import uvicorn

        from mailprobe.serve.app import create_app
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] in {"fastapi", "uvicorn", "prometheus_client",
                                                  "httpx", "multipart", "starlette"}:  # fmt: skip
            raise fail(SERVE_EXTRA) from None
        raise
    from mailprobe.config import ConfigError
    from mailprobe.serve.config import ServeConfig
    from mailprobe.serve.keys import active_keys

    current = settings()
    keys = active_keys(_store())
    if not _is_loopback(host) and not keys and not no_auth:
        raise fail(
            f"--host {host}: no API key exists, so the API would be open to the network; "
            "create one (`mailprobe apikey create NAME`) or say --no-auth"
        )
    try:
        config = ServeConfig.from_env(auth=not no_auth, require_key=not _is_loopback(host))
    except ConfigError as exc:
        raise fail(f"configuration error: {exc}") from None
    _check_port(host, port)
    shown = f"[{host}]" if ":" in host else host
    auth = "off (--no-auth)" if no_auth else f"{keys} API key(s)" if keys else "none (loopback)"
    typer.echo(f"mailprobe serve: http://{shown}:{port}/ (auth: {auth})", err=True)
    uvicorn.run(create_app(current, config), host=host, port=port, log_level=log_level)


@apikey_app.command("create")
def apikey_create(
    name: Annotated[str, typer.Argument(help="What the key is for (shown in `apikey list`).")],
) -> None:
    """Make a key and print it once: it is stored only as a hash."""
    from mailprobe.serve.keys import create_key

    if not name.strip() or len(name) > 100:
        raise fail("give the key a name of 1 to 100 characters")
    info, key = create_key(_store(), name.strip())
    typer.echo(key)
    typer.echo(f"key {info.id} ({info.name}) created; keep it now, it is not shown again", err=True)


@apikey_app.command("list")
def apikey_list() -> None:
    """The keys: id, name, prefix, created, last used, revoked."""
    from mailprobe.serve.keys import list_keys

    rows = list_keys(_store())
    if not rows:
        typer.echo("no API keys (`mailprobe apikey create NAME` makes one)", err=True)
        return
    for k in rows:
        when = k.created_at.strftime("%Y-%m-%d %H:%M")
        used = k.last_used_at.strftime("%Y-%m-%d %H:%M") if k.last_used_at else "never used"
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        typer.echo(f"{k.id:4}  {k.name:24}  {k.prefix}…  created {when}  {used}  {state}")


@apikey_app.command("revoke")
def apikey_revoke(
    key: Annotated[str, typer.Argument(help="The key's id, name or prefix.")],
) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    from mailprobe.serve.keys import revoke_key

    info = revoke_key(_store(), key)
    if info is None:
        raise fail(f"no single active key matches {key!r} (see `mailprobe apikey list`)")
    typer.echo(f"key {info.id} ({info.name}) revoked")
