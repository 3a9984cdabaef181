"""Waiting on conditions with deadlines: the suites never sleep to synchronise."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    pass


class WaitAborted(AssertionError):
    """Raised by a probe that knows the condition can no longer come true: ends the wait at once."""


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
    describe: Callable[[], str] | None = None,
) -> T:
    """Polls `probe` until it returns a truthy value and returns it; fails with `what` (and `describe()`, the
    state that explains the failure) when `timeout` seconds pass. Exceptions from the probe count as "not yet"
    and the last one is reported."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except WaitAborted:
            raise
        except Exception as error:  # a probe racing a resource's creation raises; keep polling
            last_error = error
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_error!r}" if last_error else ""
            state = f"\nstate: {describe()}" if describe else ""
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}{detail}{state}")
        time.sleep(interval)
