"""Figures for the platform in the lab: time from applying a new tag to every new pod serving
it, and the platform's memory at rest.

    .venv/bin/python benchmarks/platform_rollout.py [--rounds 3]

Rolls `api-server` in mlops-production to 1.5.0 and back each round.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import time

import requests

from opslab import cluster
from opslab.lab.podlet import pod_processes
from opslab.lab.spec import LabSpec

NS = ("-n", "mlops-production")


def serving(tag: str) -> bool:
    pods = json.loads(cluster.kubectl("get", "pods", "-l", "app=api-server", *NS, "-o", "json").stdout)["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if len(live) != 3 or any(p["spec"]["containers"][0]["image"].rsplit(":", 1)[1] != tag for p in live):
        return False
    try:
        return all(requests.get(f"http://{p['status']['podIP']}:8000/health", timeout=2).json()["version"] == tag
                   for p in live)
    except (requests.RequestException, KeyError, ValueError):
        return False


def roll_to(tag: str) -> float:
    started = time.monotonic()
    cluster.kubectl("set", "image", "deployment/api-server", f"api-server=registry.local/mlops/api-server:{tag}", *NS)
    while not serving(tag):
        if time.monotonic() - started > 180:
            raise TimeoutError(f"api-server {tag} not serving after 180s")
        time.sleep(0.1)
    return time.monotonic() - started


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages (PostgreSQL's buffers, say) counted once in all."""
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_pss(pid: int) -> int:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return pss_bytes(pid) + sum(tree_pss(int(child)) for child in children)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times = []
    for round_ in range(args.rounds):
        times.append(roll_to("1.5.0"))
        roll_to("1.4.2")
        print(f"round {round_ + 1}: 1.5.0 serving on all 3 pods after {times[-1]:.1f}s", flush=True)
    print(f"\nnew tag applied -> every new pod serving it: median {statistics.median(times):.1f}s "
          f"(min {min(times):.1f}, max {max(times):.1f})")

    time.sleep(20)
    processes = pod_processes(LabSpec.default())
    by_container = collections.Counter()
    for name in processes.names():
        if (pid := processes.pid(name)) is not None:
            by_container[name.rsplit("_", 1)[1]] += tree_pss(pid)
    print("platform memory at rest, PSS (both namespaces; each container with its monitor):")
    for container, total in sorted(by_container.items()):
        print(f"  {container:<20} {total / 2**20:7.0f} MiB")
    print(f"  {'total':<20} {sum(by_container.values()) / 2**20:7.0f} MiB")


if __name__ == "__main__":
    main()
