"""The one URL redactor (mailprobe.redact) and the places that show URLs through it."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from sqlalchemy import make_url

from mailprobe.redact import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:secret@127.0.0.1:6379/0", "redis://user:***@127.0.0.1:6379/0"),
        ("postgresql://u:p@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql+psycopg://u:p@h:5432/db?sslmode=require",
            "postgresql+psycopg://u:***@h:5432/db?sslmode=require",
        ),
        ("rediss://u:@h/0", "rediss://u:***@h/0"),  # an empty password is hidden too
        # a raw password holding "@", "/", ":" or "#" is still hidden whole
        ("redis://u:p@ss/w:o#rd@h:6379/0", "redis://u:***@h:6379/0"),
        ("amqp://me@example.com:pw@h/", "amqp://me@example.com:***@h/"),
    ],
)
def test_password_hidden(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://user@host:6379/0",
        "sqlite:///data/mailprobe.db",
        "sqlite:////tmp/a:b@c.db",
        "sqlite:///:memory:",
        "host:6379",
        "",
    ],
)
def test_urls_without_a_password_unchanged(url: str) -> None:
    assert redact_url(url) == url


def test_idempotent() -> None:
    once = redact_url("redis://:secret@host:6379/0")
    assert redact_url(once) == once


def test_same_as_sqlalchemy_for_database_urls() -> None:
    url = make_url("postgresql+psycopg://user:s3cr%40t@db.example:5432/mailprobe")
    assert redact_url(url.render_as_string(hide_password=False)) == url.render_as_string(
        hide_password=True
    )


_SCHEMES = st.sampled_from(["redis", "rediss", "postgresql", "postgresql+psycopg", "amqp"])
_USERS = st.text(st.characters(codec="ascii", exclude_characters=":/"), max_size=8)
_PASSWORDS = st.text(st.characters(codec="utf-8"), min_size=1)
_HOSTS = st.from_regex(r"[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True)
_PATHS = st.from_regex(r"(/[a-z0-9_]{0,10}){0,2}(\?[a-z]{1,5}=[a-z0-9]{0,5})?", fullmatch=True)


@given(scheme=_SCHEMES, user=_USERS, password=_PASSWORDS, host=_HOSTS, path=_PATHS)
def test_the_password_never_appears(
    scheme: str, user: str, password: str, host: str, path: str
) -> None:
    rest = f"{scheme}://{user}@{host}{path}"
    assume(password not in rest and password not in "***")
    url = f"{scheme}://{user}:{password}@{host}{path}"
    shown = redact_url(url)
    assert password not in shown
    assert shown.endswith(f"@{host}{path}")


@given(url=st.text())
def test_never_raises_and_never_grows_a_password(url: str) -> None:
    shown = redact_url(url)
    assert redact_url(shown) == shown
