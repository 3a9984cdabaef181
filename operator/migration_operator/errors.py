"""Errors as observations: any exception met while observing or acting becomes a `LastError` in status, and the
phase machine decides on it like on anything else it observes (retry a transient one, fail the phase on one that
cannot go away or that outlived `timeouts.transientErrorSeconds`).

`describe` is the one place that turns an exception into text for status, events and logs: it says what kind of
error it was, keeps it short, and removes the login's values (see `scrub`).

`scrub` is the one scrubber of every text that leaves the operator: the status document (`scrub_document`, applied to
the whole patch before it is compared and written), events, and every log line (`ScrubFilter`, on the root handlers
and on kopf's object logger, whose lines kopf also posts as events). It removes the values of the run's Secrets
(`remember`: set once per pass for the task that reconciles the run), the user name PostgreSQL echoes in login
errors, passwords in SQL and conninfo text, and the row data PostgreSQL quotes in its errors (a check that casts a
secret column, a unique violation's key). What it cannot know (a value of a Secret the run does not reference) it
cannot remove: which is why only opted-in Secrets are used at all (`policy.py`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any

import kopf
import psycopg

from . import kube
from .models import LastError

MESSAGE_LIMIT = 2000
# SQLSTATE classes that retrying cannot fix: privileges and syntax (42), login (28), a missing database (3D),
# data exceptions (22), feature not supported (0A).
PERMANENT_SQLSTATE_CLASSES = ("42", "28", "3D", "22", "0A")
# HTTP statuses of the API server that retrying cannot fix: bad request, forbidden (RBAC, ResourceQuota, admission),
# not found, invalid.
PERMANENT_HTTP_STATUSES = (400, 403, 404, 405, 422)

# Shorter values are left alone: scrubbing "1" or "db" would blank half of every message.
SECRET_MIN_LENGTH = 3
MASK = "***"
_PASSWORD_ASSIGNMENT = r"""(\b\w*(?:PASSWORD|PASSWD|PWD)\w*"?\s*[=:]\s*)("[^"\n]*"|'[^'\n]*'|[^\s,;&"']+)"""
# (pattern, replacement): what PostgreSQL, libpq, JDBC and SQL text put next to a secret or to row data.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # the role name echoed in login errors: for user "x", role "x" does not exist, user "x"
    (re.compile(r'\b(for user|role|user) "[^"\n]*"', re.IGNORECASE), rf'\1 "{MASK}"'),
    # CREATE/ALTER ROLE ... PASSWORD '...' (a failed statement quoted back), also E'...' and $$...$$
    (
        re.compile(r"\b(PASSWORD)(\s+)([eE]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'|\$(\w*)\$.*?\$\4\$)", re.DOTALL | re.I),
        rf"\1\2'{MASK}'",
    ),
    # password=..., PGPASSWORD=..., "password": "..." (conninfo strings, environment dumps, JSON)
    (re.compile(_PASSWORD_ASSIGNMENT, re.IGNORECASE), rf"\1{MASK}"),
    # row data PostgreSQL quotes in errors: invalid input syntax for type integer: "<value>", enum input, literals
    (
        re.compile(
            r'((?:invalid input syntax for (?:type )?[^:"\n]{1,80}|invalid input value for enum [^:"\n]{1,80}'
            r'|malformed [a-z ]{1,40} literal|invalid value|value too long for type [^:"\n]{1,80}):? )"[^"\n]*"',
            re.IGNORECASE,
        ),
        rf'\1"{MASK}"',
    ),
    (re.compile(r'\b(value )"[^"\n]*"( is out of range)', re.IGNORECASE), rf'\1"{MASK}"\2'),
    # DETAIL: Key (email)=(x@y) already exists / is not present / conflicts with ...
    (re.compile(r"\b(Key \([^)\n]*\)=)\((?:[^()\n]|\([^()\n]*\))*\)"), rf"\1({MASK})"),
    # DETAIL: Failing row contains (...)
    (re.compile(r"\b(Failing row contains )\([^\n]*", re.IGNORECASE), rf"\1({MASK})"),
)
# The secret values known to the task that reconciles one run (set by `remember`, once per pass). A context variable:
# each run's daemon is its own asyncio task, so one run's values never scrub, or fail to scrub, another's texts.
_known: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("dbops_known_secrets", default=())


def retryable(error: BaseException) -> bool:
    """Whether the same call may succeed later without anyone changing anything."""
    if isinstance(error, psycopg.Error):
        state = error.sqlstate or ""
        return not state.startswith(PERMANENT_SQLSTATE_CLASSES)
    if isinstance(error, kube.ApiError):
        return error.status not in PERMANENT_HTTP_STATUSES
    return not isinstance(error, kopf.PermanentError)


def _variants(secret: str) -> set[str]:
    """The spellings a value takes in the texts we handle: as is, JSON-escaped, URL-encoded, SQL-quoted."""
    return {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        secret.replace("'", "''"),
    }


def remember(secrets: Iterable[str]) -> None:
    """The secret values of the run this task works for: every later `scrub` in the task removes them too."""
    _known.set(tuple(sorted({s for s in secrets if s and len(s) >= SECRET_MIN_LENGTH})))


def known_secrets() -> tuple[str, ...]:
    return _known.get()


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """The text without the given secret values (and those `remember`ed for this task), without the user name
    PostgreSQL echoes in login errors, and without passwords and row data in SQL and error texts."""
    if not text:
        return text
    values = {s for s in (*secrets, *_known.get()) if s and len(s) >= SECRET_MIN_LENGTH}
    spellings = {v for s in values for v in _variants(s) if len(v) >= SECRET_MIN_LENGTH}
    for secret in sorted(spellings, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_document(value: Any, secrets: Iterable[str] = ()) -> Any:
    """`scrub` applied to every string (values, not keys) of a JSON-like document."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, dict):
        return {key: scrub_document(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_document(item, secrets) for item in value]
    return value


class ScrubFilter(logging.Filter):
    """Scrubs a log record in place (message, arguments and traceback) before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "dbops_scrubbed", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return True
        record.msg, record.args = scrub(message), ()
        if record.exc_info:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = scrub(text), None
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        record.dbops_scrubbed = True
        return True


def install_log_scrubber() -> None:
    """Every log line through `ScrubFilter`: the root logger's handlers (stdout, JSON) and kopf's object logger
    (kopf posts its lines as Kubernetes events)."""
    scrubber = ScrubFilter()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(scrubber)
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, ScrubFilter) for f in objects.filters):
        objects.addFilter(scrubber)


def text_of(error: BaseException) -> str:
    if isinstance(error, kube.ApiError):
        found = re.search(r'"message":\s*"((?:[^"\\]|\\.)*)"', error.body)
        detail = found.group(1) if found else (error.reason or "")
        return f"HTTP {error.status}: {detail}"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def describe(
    error: BaseException,
    action: str,
    now: str,
    previous: LastError | None = None,
    secrets: Iterable[str] = (),
) -> LastError:
    """The error as the run's `lastError`: counted and dated from its first occurrence when the same action kept
    failing."""
    message = scrub(text_of(error), secrets)[:MESSAGE_LIMIT]
    same = previous is not None and previous.action == action
    return LastError(
        action=action,
        message=message,
        at=now,
        since=(previous.since or previous.at) if same and previous else now,
        count=(previous.count + 1) if same and previous else 1,
        retryable=retryable(error),
    )
