"""The one bounded wait, shared by the library, the checks, the notebooks and the tests.

A *look* is a function that returns what it saw, or raises NotYet when the thing it looks for is
not so yet but may become so (a rollout under way, a scrape not yet done). `eventually` calls it
until it returns or the time is up; any other exception (a state that is plainly wrong) stops at
once. Every wait ends, with a sentence saying what did not happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
INTERVAL = 0.5  # s between looks


class NotYet(AssertionError):
    """Not so yet, but it may become so: worth another look until the time is up."""


def eventually(look: Callable[[], T], timeout: float, *, interval: float = INTERVAL,
               error: type[Exception] = TimeoutError) -> T:
    """`look()`'s value, once it stops raising NotYet; after `timeout` seconds, `error` with the
    last NotYet's message and how long it waited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return look()
        except NotYet as not_yet:
            if time.monotonic() >= deadline:
                raise error(f"{not_yet} (waited {timeout:.0f}s)") from None
        time.sleep(interval)


def wait_until(condition: Callable[[], T], what: str, timeout: float = 60, *,
               interval: float = INTERVAL) -> T:
    """Call `condition()` until it returns something truthy and return that; TimeoutError
    ("waited 60s for <what>") when it does not within `timeout` seconds."""
    def look() -> T:
        value = condition()
        if not value:
            raise NotYet(f"still waiting for {what}")
        return value
    try:
        return eventually(look, timeout, interval=interval)
    except TimeoutError:
        raise TimeoutError(f"waited {timeout:.0f}s for {what}") from None
