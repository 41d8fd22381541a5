"""Opening the database: engines, SQLite's WAL and busy timeout, migrations, clear errors.

DATABASE_URL chooses the backend (SQLite by default, PostgreSQL at scale).
SQLite runs in WAL mode with a busy timeout so a CLI run and a worker can
write the same file; every way of failing to open the database ends in a
StoreError that says which URL and what went wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, exc, inspect, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from mailprobe.redact import redact_url

if TYPE_CHECKING:
    from alembic.config import Config

# The newest migration. Checking a database against it needs no Alembic import (a
# tenth of a second at every start); a test keeps it equal to the migrations' head.
SCHEMA_HEAD = "0005"
SQLITE_BUSY_TIMEOUT_S = 30
CONNECT_TIMEOUT_S = 5


class StoreError(RuntimeError):
    """The database cannot be used; the message names the URL (password hidden)."""


def normalise_url(url: str) -> URL:
    """Parse DATABASE_URL; `postgresql://` means psycopg 3, the driver we ship."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError as err:
        raise StoreError(f"DATABASE_URL {url!r} is not a database URL: {err}") from None
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _shown(url: URL) -> str:
    """The URL as SQLAlchemy spells it (percent-encoded), password hidden by the one redactor."""
    return redact_url(url.render_as_string(hide_password=False))


class SharedList(list[Any]):
    """A list several rows store as it is and nobody changes once made (a session's
    transcript, see `queries._Transcripts`): the engine encodes it once."""


class _JSONDumps:
    """json.dumps (SQLAlchemy's default for JSON columns), remembering the `SharedList` it
    encoded last, so the rows of a batch that share one are encoded once. Other values may
    be changed between rows by their callers: they are encoded every time. Compared by
    identity, and the value is held, so no other list is mistaken for it; the pair is read
    at once, so thread-safe."""

    def __init__(self) -> None:
        self._last: tuple[SharedList, str] | None = None

    def __call__(self, value: object) -> str:
        if type(value) is not SharedList:
            return json.dumps(value)
        last = self._last
        if last is not None and last[0] is value:
            return last[1]
        encoded = json.dumps(value)
        self._last = (value, encoded)
        return encoded


def create_store_engine(url: str) -> Engine:
    parsed = normalise_url(url)
    kwargs: dict[str, Any] = {"future": True, "json_serializer": _JSONDumps()}
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if path and path != ":memory:" and not path.startswith("file:"):
            folder = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as err:  # a parent is a file, or not ours to write
                raise StoreError(
                    f"DATABASE_URL {_shown(parsed)}: cannot create {folder}: {err.strerror or err}"
                ) from None
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    elif parsed.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **kwargs)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as err:
        raise StoreError(f"DATABASE_URL {_shown(parsed)}: {err}") from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "mailprobe.store:migrations")
    cfg.attributes["engine"] = engine
    return cfg


class Store:
    """A database handle: sessions, migrations, a health check."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_store_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def shown_url(self) -> str:
        return _shown(self.engine.url)

    def check(self) -> None:
        """Connect once; raise StoreError with the reason when we cannot."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except exc.SQLAlchemyError as err:
            raise StoreError(
                f"cannot open database {self.shown_url}: {err.__class__.__name__}: "
                f"{str(getattr(err, 'orig', err)).strip()}"
            ) from None

    def upgrade(self) -> None:
        """Apply every migration not yet applied (a no-op when up to date)."""
        from alembic import command

        self.check()
        command.upgrade(alembic_config(self.engine), "head")

    def ensure_schema(self) -> None:
        """Migrate a database that has never been migrated or is behind."""
        self.check()
        if not self._at_head():
            self.upgrade()

    def _at_head(self) -> bool:
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return False
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            return bool(current == SCHEMA_HEAD)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on error.

        A database failure (locked past the busy timeout, unreachable, schema missing)
        becomes a StoreError naming the database, instead of a driver traceback."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except exc.DBAPIError as err:
                session.rollback()
                raise StoreError(
                    f"database {self.shown_url}: {str(getattr(err, 'orig', err)).strip()}"
                ) from err
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()


_open: dict[str, Store] = {}


def open_store(url: str) -> Store:
    """The process's Store for `url`, migrated to the newest schema on first use."""
    store = _open.get(url)
    if store is None:
        store = Store(url)
        store.ensure_schema()
        _open[url] = store
    return store
