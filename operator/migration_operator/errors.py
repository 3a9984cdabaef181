"""Errors as observations: any exception met while observing or acting becomes a `LastError` in status, and the
phase machine decides on it like on anything else it observes (retry a transient one, fail the phase on one that
cannot go away or that outlived `timeouts.transientErrorSeconds`).

`describe` is the one place that turns an exception into text for status, events and logs: it says what kind of
error it was, keeps it short, and removes the login's values (see `scrub`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import kopf
import psycopg
from kubernetes.client.exceptions import ApiException

from .models import LastError

MESSAGE_LIMIT = 2000
# SQLSTATE classes that retrying cannot fix: privileges and syntax (42), login (28), a missing database (3D),
# data exceptions (22), feature not supported (0A).
PERMANENT_SQLSTATE_CLASSES = ("42", "28", "3D", "22", "0A")
# HTTP statuses of the API server that retrying cannot fix: bad request, forbidden (RBAC, ResourceQuota, admission),
# not found, invalid.
PERMANENT_HTTP_STATUSES = (400, 403, 404, 405, 422)
_USER_IN_MESSAGE = re.compile(r'(for user|role|user) "[^"]*"', re.IGNORECASE)


def retryable(error: BaseException) -> bool:
    """Whether the same call may succeed later without anyone changing anything."""
    if isinstance(error, psycopg.Error):
        state = error.sqlstate or ""
        return not state.startswith(PERMANENT_SQLSTATE_CLASSES)
    if isinstance(error, ApiException):
        return error.status not in PERMANENT_HTTP_STATUSES
    return not isinstance(error, kopf.PermanentError)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """The text without the given secret values and without the user name PostgreSQL echoes in login errors."""
    for secret in sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, "***")
    return _USER_IN_MESSAGE.sub(lambda match: f'{match.group(1)} "***"', text)


def text_of(error: BaseException) -> str:
    if isinstance(error, ApiException):
        body = error.body.decode() if isinstance(error.body, bytes) else str(error.body or "")
        found = re.search(r'"message":\s*"((?:[^"\\]|\\.)*)"', body)
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
