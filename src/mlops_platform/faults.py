"""How a release misbehaves at run time: failed and slow business requests, and a memory leak.

The effects are real, not reported: a faulty release really answers 500 and really takes longer,
so Prometheus sees the error rate and the latency rise; a leaking release really holds memory,
so the process's resident set grows.
"""

from __future__ import annotations

import random
import threading
import time

from mlops_platform.releases import LEAK_CAP_BYTES, Release

LEAK_TICK_SECONDS = 0.25


class InjectedFault(Exception):
    """A business request that this release fails, as its bug would."""


class Misbehaviour:
    def __init__(self, release: Release):
        self.release = release
        self._random = random.Random()
        self._leaked: list[bytes] = []
        self._leaked_bytes = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the steady leak, if this release has one."""
        if self.release.leak_bytes_per_second:
            threading.Thread(target=self._leak_steadily, name="leak", daemon=True).start()

    def before_business_request(self) -> None:
        """Run before each business request: may leak, delay, or raise InjectedFault."""
        self._leak(self.release.leak_bytes_per_request)
        if self.release.added_latency_seconds:
            time.sleep(self.release.added_latency_seconds)
        if self._random.random() < self.release.error_ratio:
            raise InjectedFault(self.release.fault_message)

    def _leak_steadily(self) -> None:
        per_tick = int(self.release.leak_bytes_per_second * LEAK_TICK_SECONDS)
        while True:
            time.sleep(LEAK_TICK_SECONDS)
            self._leak(per_tick)

    def _leak(self, size: int) -> None:
        if not size:
            return
        with self._lock:
            if self._leaked_bytes + size > LEAK_CAP_BYTES:
                return
            # Filled, not zeroed: the kernel maps untouched zero pages lazily, and they would not
            # count in the resident set.
            self._leaked.append(b"\xa5" * size)
            self._leaked_bytes += size
