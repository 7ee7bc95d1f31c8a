"""JSON logs: one object per line on stdout, the shape `kubectl logs … | jq` and log pipelines read."""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import UTC, datetime

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class JsonLog:
    def __init__(self, service: str, level: str = "info"):
        self.service = service
        self.threshold = LEVELS[level]
        self._lock = threading.Lock()  # request threads write concurrently; keep lines whole

    @classmethod
    def from_env(cls, service: str) -> JsonLog:
        """A log at env `LOG_LEVEL` (debug, info, warning, error; default info)."""
        level = os.environ.get("LOG_LEVEL", "info").lower()
        log = cls(service, level if level in LEVELS else "info")
        if level not in LEVELS:
            log.warning("unknown LOG_LEVEL, using info", log_level=level, known=sorted(LEVELS))
        return log

    def log(self, level: str, msg: str, **fields) -> None:
        if LEVELS[level] < self.threshold:
            return
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = json.dumps({"ts": ts, "level": level, "service": self.service, "msg": msg, **fields}, default=str)
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def debug(self, msg: str, **fields) -> None:
        self.log("debug", msg, **fields)

    def info(self, msg: str, **fields) -> None:
        self.log("info", msg, **fields)

    def warning(self, msg: str, **fields) -> None:
        self.log("warning", msg, **fields)

    def error(self, msg: str, **fields) -> None:
        self.log("error", msg, **fields)
