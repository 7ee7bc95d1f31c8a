"""JSON over HTTP with a timeout, for the platform's outbound calls.

Proxy settings in the environment are ignored on purpose: every call goes straight to the address
it names, inside the cluster, never through a proxy that could carry it elsewhere.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Unreachable(Exception):
    """No HTTP answer: refused, reset, timed out, or a name that does not resolve."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # the parsed JSON, or None when the answer was not JSON


def request_json(
    method: str, url: str, *, body: Any = None, headers: dict[str, str] | None = None, timeout: float
) -> Reply:
    """Send one request; `timeout` bounds connecting and each read, so no call waits forever."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with _opener.open(request, timeout=timeout) as answer:
            return Reply(answer.status, _parse(answer.read()))
    except urllib.error.HTTPError as answer:  # a 4xx or 5xx is still an answer
        with answer:
            return Reply(answer.code, _parse(answer.read()))
    except (OSError, http.client.HTTPException) as error:  # URLError and timeouts are OSErrors
        raise Unreachable(str(getattr(error, "reason", error))) from error


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
