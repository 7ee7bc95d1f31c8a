"""How fresh the platform's backups are, for Prometheus: an exporter over the lab's backup bucket.

The lab keeps its object-store buckets as folders (`<root>/mlops-backup-bucket/manual/backup-20250101.sql`):
an object there is a backup that was completed and uploaded. At each scrape this reads the folder
and exports, per bucket and top-level prefix (`manual`, `latest`, …), the newest object's upload
time and size, which the backup-too-old alert and the daily checklist read:

    mlops_backup_last_success_timestamp_seconds{bucket="mlops-backup-bucket",prefix="manual"}
    mlops_backup_last_size_bytes{bucket="mlops-backup-bucket",prefix="manual"}

    python -m opslab.lab.backup_exporter --root .opslab/backups --listen 127.0.0.1:9106
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily


class BackupCollector:
    def __init__(self, root: Path):
        self.root = root

    def newest(self) -> dict[tuple[str, str], tuple[float, int]]:
        """Upload time and size of the newest object of each (bucket, prefix); objects at a
        bucket's top have prefix ""."""
        found: dict[tuple[str, str], tuple[float, int]] = {}
        for bucket in sorted(p for p in self.root.glob("*") if p.is_dir()):
            for obj in bucket.rglob("*"):
                try:
                    stat = obj.stat()
                except FileNotFoundError:
                    continue  # removed while we looked
                if not obj.is_file():
                    continue
                relative = obj.relative_to(bucket).parts
                key = (bucket.name, relative[0] if len(relative) > 1 else "")
                if key not in found or stat.st_mtime > found[key][0]:
                    found[key] = (stat.st_mtime, stat.st_size)
        return found

    def collect(self):
        labels = ("bucket", "prefix")
        when = GaugeMetricFamily("mlops_backup_last_success_timestamp_seconds",
                                 "Upload time of the newest backup object, in seconds since the epoch.", labels=labels)
        size = GaugeMetricFamily("mlops_backup_last_size_bytes", "Size of the newest backup object.", labels=labels)
        for key, (mtime, length) in self.newest().items():
            when.add_metric(key, mtime)
            size.add_metric(key, length)
        yield when
        yield size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m opslab.lab.backup_exporter", description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="the folder holding the buckets")
    parser.add_argument("--listen", required=True, help="HOST:PORT, a loopback address")
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    registry.register(BackupCollector(args.root))
    host, _, port = args.listen.rpartition(":")
    start_http_server(int(port), addr=host, registry=registry)
    threading.Event().wait()  # the server runs in its own thread until the process is stopped


if __name__ == "__main__":
    main()
