"""The lab's notification sink: where Alertmanager's webhooks land, kept for notebooks to read.

Each notification POSTed to `/alerts` (Alertmanager's webhook document, with the time it
arrived) is appended to a JSON-lines file, so it survives a restart; `GET /notifications` answers them all as a JSON list,
`GET /notifications?since=<unix seconds>` those received after that moment.

    python -m opslab.lab.alert_receiver --listen 127.0.0.1:9095 --store notifications.jsonl
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from mlops_platform.logs import JsonLog

MAX_BODY_BYTES = 4 * 1024 * 1024
log = JsonLog("alert-receiver")


class Store:
    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, notification: dict) -> dict:
        record = {"received_at": time.time(), **notification}
        with self.lock, self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        return record

    def since(self, moment: float) -> list[dict]:
        with self.lock:
            lines = self.path.read_text().splitlines() if self.path.exists() else []
        return [record for record in map(json.loads, lines) if record["received_at"] > moment]


def handler(store: Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if urlsplit(self.path).path != "/alerts":
                return self._answer(404, {"error": "notifications are POSTed to /alerts"})
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY_BYTES:
                return self._answer(400, {"error": f"expected a JSON body of 1 to {MAX_BODY_BYTES} bytes"})
            try:
                notification = json.loads(self.rfile.read(length))
            except ValueError:
                return self._answer(400, {"error": "the body is not JSON"})
            record = store.add(notification)
            log.info("notification", receiver=record.get("receiver"), status=record.get("status"),
                     alerts=[a.get("labels", {}).get("alertname") for a in record.get("alerts", [])])
            self._answer(200, {"stored": True})

        def do_GET(self):
            url = urlsplit(self.path)
            if url.path == "/healthz":
                return self._answer(200, {"status": "ok"})
            if url.path != "/notifications":
                return self._answer(404, {"error": f"no route {url.path}"})
            try:
                since = float(parse_qs(url.query).get("since", ["0"])[0])
            except ValueError:
                return self._answer(400, {"error": "since must be a number of seconds since the epoch"})
            self._answer(200, store.since(since))

        def _answer(self, status: int, document) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass  # each notification is logged above; reads are not worth a line

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m opslab.lab.alert_receiver", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT, a loopback address")
    parser.add_argument("--store", required=True, type=Path, help="the JSON-lines file of notifications")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), handler(Store(args.store)))
    log.info("listening", address=args.listen, store=str(args.store))
    server.serve_forever()


if __name__ == "__main__":
    main()
