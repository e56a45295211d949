"""The one URL masker: a password never reaches output, and nothing else changes."""

from __future__ import annotations

import pytest

from taskq import App
from taskq.errors import ConfigurationError
from taskq.urls import mask_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:s3cret@host/1", "rediss://user:***@host/1"),
        ("redis://host/0?password=s3cret&x=1", "redis://host/0?password=***&x=1"),
        ("amqp://guest:s3cret@localhost:5672//", "amqp://guest:***@localhost:5672//"),
        ("amqp://user:p%40ss@h//", "amqp://user:***@h//"),
        ("db+postgresql://u:s3cret@h/db", "db+postgresql://u:***@h/db"),
        ("redis://u:s3cret@h:notaport/0", "redis://u:***@h:notaport/0"),
    ],
)
def test_a_password_is_masked(url: str, shown: str) -> None:
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "redis://host:6379/0",
        "redis://user@host:6379/0",  # a user but no password: no ":***@"
        "db+postgresql://u@h/db",
        "sqlite:///taskq.sqlite3",
        "memory://",
        "amqp://localhost//",
    ],
)
def test_a_url_without_a_password_is_unchanged(url: str) -> None:
    assert mask_url(url) == url


def test_app_repr_and_unknown_broker_error_hide_the_password() -> None:
    app = App("proj", broker="redis://:hunter2@localhost:6379/0")
    assert "hunter2" not in repr(app)
    bad = App("proj", broker="reddis://:hunter2@localhost:6379/0")
    with pytest.raises(ConfigurationError) as info:
        bad.new_broker("c")
    assert "hunter2" not in str(info.value) and "reddis://:***@" in str(info.value)
