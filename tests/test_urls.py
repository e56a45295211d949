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


def test_each_password_of_a_failover_list_is_masked() -> None:
    url = "amqp://guest:s3cret1@a:5672//;amqp://guest:s3cret2@b:5672//"
    assert mask_url(url) == "amqp://guest:***@a:5672//;amqp://guest:***@b:5672//"


# -- issue 12, item 8: clear errors for URL forms taskq does not take -------------------


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("redis://:pw@localhost:6379/0?ssl=true", "For TLS use a rediss:// URL"),
        ("redis://localhost:6379/0?bogus=1", "has an option redis-py cannot use \\(bogus\\)"),
        ("rediss://localhost/0?ssl_cert_reqs=maybe", "Invalid SSL Certificate Requirements"),
        ("redis://h1:6379,h2:6379/0", "names several hosts"),
        ("redis://localhost/abc", "the path must be a database number"),
        ("sentinel://localhost:26379", "Redis Sentinel is not supported"),
        ("redis+socket:///tmp/redis.sock", "Unix socket is not supported"),
        ("Redis://localhost/0", "Did you mean 'redis'"),
    ],
)
def test_unsupported_url_forms_are_configuration_errors(url: str, error: str) -> None:
    from taskq.broker import broker_from_url

    with pytest.raises(ConfigurationError, match=error) as raised:
        broker_from_url(url, consumer_id="c")
    assert "pw" not in str(raised.value)
