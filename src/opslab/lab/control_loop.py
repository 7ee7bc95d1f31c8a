"""A lab controller's main loop: one pass per interval until SIGTERM.

A problem is logged when it starts and when it ends, never once a pass, so that a long outage
leaves two lines in the log rather than one a second.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from mlops_platform.logs import JsonLog


def describe(error: Exception) -> str:
    """A line that stays the same while the trouble does (no object addresses, no headers)."""
    if isinstance(error, ApiException):
        return f"the API server answered {error.status} {error.reason}"
    if isinstance(error, (HTTPError, OSError)):
        return f"cannot reach the API server ({type(error).__name__})"
    return f"{type(error).__name__}: {error}"


def run(one_pass: Callable[[], None], interval: float, log: JsonLog,
        explain: Callable[[Exception], str | None] = lambda error: None) -> None:
    """Call `one_pass` every `interval` seconds; `explain` names the problems this controller
    knows (a missing CRD), `describe` the rest."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    problem = None
    while not stop.is_set():
        try:
            one_pass()
            described = None
        except Exception as error:  # noqa: BLE001 - a controller keeps going, whatever one pass met
            described = explain(error) or describe(error)
        if described != problem:
            if described:
                log.warning("waiting", problem=described)
            else:
                log.info("working again", after=problem)
        problem = described
        stop.wait(interval)
    log.info("stopped")
