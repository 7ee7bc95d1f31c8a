"""A steady, low-rate stream of requests to the api-server, as its users would send them.

Most requests ask for a prediction for a made-up iris flower on behalf of a random seeded user;
the rest check /health. Configured from the environment:

    TARGET_URL  base URL of the api-server (default http://api-server:8000)
    RATE        requests per second (default 2)
    API_KEY     sent as X-API-Key when set
    LOG_LEVEL   debug, info, warning or error (default info)

Runs until SIGTERM, or for a bounded run:  python -m mlops_platform.traffic --count 100 --duration 60
Logs a JSON summary every 30 seconds and a final one when it stops.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import threading
import time
from collections import Counter

from mlops_platform.http_client import Unreachable, request_json
from mlops_platform.iris import random_flower
from mlops_platform.logs import JsonLog

DEFAULT_TARGET_URL = "http://api-server:8000"
DEFAULT_RATE = 2.0
PREDICT_SHARE = 0.8
SEEDED_USER_IDS = range(1, 41)  # the users schema.sql seeds
ANONYMOUS_SHARE = 0.1
TIMEOUT_SECONDS = 5.0
SUMMARY_EVERY_SECONDS = 30.0


class Tally:
    """What happened to the requests sent since the last summary, and in all."""

    def __init__(self):
        self.total = 0
        self._reset()

    def add(self, path: str, outcome: str, seconds: float) -> None:
        """`outcome` is the status code, or `unreachable` when there was no answer."""
        self.total += 1
        self._outcomes[f"{path} {outcome}"] += 1
        if outcome == "unreachable" or outcome.startswith("5"):
            self._errors += 1
        self._latencies.append(seconds)

    def summary(self) -> dict:
        """The interval's figures, then start a new interval."""
        latencies = sorted(self._latencies)
        figures = {
            "requests": len(latencies),
            "total_requests": self.total,
            "outcomes": dict(sorted(self._outcomes.items())),
            "errors": self._errors,
            "p50_ms": _percentile_ms(latencies, 0.50),
            "p95_ms": _percentile_ms(latencies, 0.95),
        }
        self._reset()
        return figures

    def _reset(self) -> None:
        self._outcomes: Counter[str] = Counter()
        self._errors = 0
        self._latencies: list[float] = []


def _percentile_ms(ordered: list[float], quantile: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] * 1000, 1)


class Traffic:
    def __init__(self, target_url: str, rate: float, api_key: str | None, log: JsonLog):
        self.target_url = target_url.rstrip("/")
        self.interval = 1.0 / rate
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.log = log
        self.tally = Tally()
        self.stopping = threading.Event()
        self._random = random.Random()

    def run(self, count: int | None, duration: float | None) -> None:
        started = time.monotonic()
        deadline = started + duration if duration is not None else None
        next_summary = started + SUMMARY_EVERY_SECONDS
        next_send = started
        while not self.stopping.is_set():
            if count is not None and self.tally.total >= count:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            self.send_one()
            now = time.monotonic()
            if now >= next_summary:
                self.log.info("traffic summary", **self.tally.summary())
                next_summary = now + SUMMARY_EVERY_SECONDS
            # A steady schedule; after a slow answer, carry on from now rather than burst to catch up.
            next_send = max(next_send + self.interval, now)
            wait = next_send - now
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            self.stopping.wait(wait)
        self.log.info("traffic stopped", final=True, **self.tally.summary())

    def send_one(self) -> None:
        if self._random.random() < PREDICT_SHARE:
            path = "/predict"
            body = {"features": random_flower(self._random)}
            if self._random.random() >= ANONYMOUS_SHARE:
                body["user_id"] = self._random.choice(SEEDED_USER_IDS)
            method = "POST"
        else:
            path, method, body = "/health", "GET", None
        started = time.monotonic()
        try:
            reply = request_json(
                method, self.target_url + path, body=body, headers=self.headers, timeout=TIMEOUT_SECONDS
            )
            outcome = str(reply.status)
        except Unreachable as error:
            outcome = "unreachable"
            self.log.debug("request failed", path=path, error=str(error))
        self.tally.add(path, outcome, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops_platform.traffic", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, help="stop after this many requests")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    args = parser.parse_args(argv)
    log = JsonLog.from_env("traffic")
    try:
        rate = float(os.environ.get("RATE", DEFAULT_RATE))
    except ValueError:
        rate = 0.0
    if rate <= 0:
        log.error("RATE must be a positive number of requests per second", rate=os.environ.get("RATE"))
        return 2
    traffic = Traffic(os.environ.get("TARGET_URL", DEFAULT_TARGET_URL), rate, os.environ.get("API_KEY"), log)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: traffic.stopping.set())
    signal.signal(signal.SIGINT, lambda _signum, _frame: traffic.stopping.set())
    log.info("traffic starting", target_url=traffic.target_url, rate=rate, count=args.count, duration=args.duration)
    traffic.run(args.count, args.duration)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
