"""The core every check shares: "eventually", "not yet", "plainly wrong".

A check's look raises NotYet for a state that may still come right (a rollout under way, a
certificate being issued, a scrape not yet done) and a plain AssertionError for one that will
not by waiting (the wrong release set, a verdict that contradicts the data). `settle` looks
again until the bound and then fails with the last NotYet's sentence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from opslab import cluster
from opslab.waiting import NotYet, eventually

__all__ = ["NotYet", "settle", "read"]
T = TypeVar("T")


def settle(look: Callable[[], T], timeout: float) -> T:
    """`look()`'s value once it stops saying NotYet; an AssertionError after `timeout` seconds."""
    return eventually(look, timeout, error=AssertionError)


def read(call: Callable[..., T], *args, missing: str, **kwargs) -> T:
    """One read from the cluster; `missing` is the sentence a trainee gets when it is not there."""
    try:
        return call(*args, **kwargs)
    except cluster.ApiError as error:
        if error.status == 404:
            raise AssertionError(missing) from None
        raise
