"""Figures for the lab: warm `lab up` to Ready, `reset`, and memory at rest.

    .venv/bin/python benchmarks/lab.py [--rounds 3] [--settle 30] [--rest 15]

Stops a running lab first, so run it when nothing else uses the lab.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

from opslab import cluster
from opslab.lab.lab import Lab
from opslab.lab.processes import rss_bytes


def timed(action) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def churn() -> None:
    """Changes for reset to undo: a namespace with a workload, a cordoned node, an extra role."""
    cluster.kubectl("create", "namespace", "bench-scratch")
    cluster.kubectl("create", "deployment", "web", "--image=registry.local/web:1", "--replicas=3", "-n", "bench-scratch")
    cluster.kubectl("cordon", "lab-node-1")
    cluster.kubectl("create", "clusterrole", "bench-extra", "--verb=get", "--resource=pods")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=30, help="seconds at rest before reading memory")
    parser.add_argument("--rest", type=float, default=15, help="seconds between `up` and the changes reset undoes")
    args = parser.parse_args()
    lab = Lab(out=io.StringIO())

    ups, resets = [], []
    for round_ in range(args.rounds):
        lab.down()
        ups.append(timed(lab.up))
        os.environ["KUBECONFIG"] = str(lab.spec.paths.kubeconfig)
        # Reset as a class uses it, on a lab at rest: in the seconds after `up` the components
        # that started together are still warming up, and a reset then takes about 5 s.
        time.sleep(args.rest)
        churn()
        resets.append(timed(lab.reset))
        print(f"round {round_ + 1}: up {ups[-1]:.1f}s, reset {resets[-1]:.1f}s", flush=True)

    time.sleep(args.settle)
    rows = [(name, pid) for name, pid, _, _ in lab.health()]
    print(f"\nwarm lab up to Ready: median {statistics.median(ups):.1f}s (min {min(ups):.1f}, max {max(ups):.1f}; goal <= 20s)")
    print(f"reset:                median {statistics.median(resets):.1f}s "
          f"(min {min(resets):.1f}, max {max(resets):.1f}; goal <= 5s)")
    print(f"memory at rest after {args.settle:.0f}s:")
    for name, pid in rows:
        print(f"  {name:<24} {rss_bytes(pid) / 2**20:7.0f} MiB")
    print(f"  {'total':<24} {lab.memory_bytes() / 2**20:7.0f} MiB (goal <= 1536 MiB)")


if __name__ == "__main__":
    main()
