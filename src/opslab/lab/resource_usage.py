"""What the lab's pods really use, measured from their processes and handed to kwok.

kwok plays the kubelet's resource-metrics endpoint (`/metrics/resource`, what metrics-server,
`kubectl top` and Prometheus read) from ResourceUsage objects. This publishes one per
process-backed pod, named as the pod and owned by it (so it goes when the pod goes), holding each
container's CPU in cores (from the process tree's CPU time, /proc/<pid>/stat, between two
readings) and memory (the process tree's resident set). Any other pod — a simulated one, or one
whose first reading is not in yet — gets the default of the lab's kwok configuration (components.py).

    python -m opslab.lab.resource_usage --home .opslab
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

from kubernetes.client.rest import ApiException
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from mlops_platform.logs import JsonLog
from opslab import cluster
from opslab.lab import control_loop, pki
from opslab.lab.podlet import pod_processes
from opslab.lab.spec import LabSpec, Paths

API_VERSION = "kwok.x-k8s.io/v1alpha1"
FIELD_MANAGER = "opslab-resource-usage"
INTERVAL = 5.0  # s; metrics-server reads every 15 s, Prometheus every 5 s
API_TIMEOUT = 5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
log = JsonLog("resource-usage")


@dataclass(frozen=True)
class Reading:
    """A container's CPU time so far, and when it was read (monotonic seconds)."""

    cpu_seconds: float
    at: float


def _stat(pid: int) -> tuple[int, float, int] | None:
    """Parent pid, CPU seconds (user + system) and resident bytes of one process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15, rss 24 (in pages).
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, int(fields[21]) * PAGE_BYTES


class ProcessTree:
    """Every process on the machine as it is now: its CPU time, resident bytes and children."""

    def __init__(self):
        self.stats: dict[int, tuple[int, float, int]] = {}
        self.children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and (stat := _stat(int(entry.name))):
                self.stats[int(entry.name)] = stat
                self.children.setdefault(stat[0], []).append(int(entry.name))

    def usage_below(self, root: int) -> tuple[float, int]:
        """CPU seconds and resident bytes of `root`'s descendants: the container's processes,
        not the monitor (`root`) that runs them, as a container runtime's shim is not the container."""
        cpu, memory, todo = 0.0, 0, list(self.children.get(root, []))
        while todo:
            pid = todo.pop()
            cpu += self.stats[pid][1]
            memory += self.stats[pid][2]
            todo.extend(self.children.get(pid, []))
        return cpu, memory


def cpu_cores(previous: Reading | None, current: Reading) -> float:
    """Cores used between two readings; none when there is no earlier one, or the container
    restarted meanwhile (its CPU time went back)."""
    if previous is None or current.cpu_seconds < previous.cpu_seconds or current.at <= previous.at:
        return 0.0
    return (current.cpu_seconds - previous.cpu_seconds) / (current.at - previous.at)


class Publisher:
    def __init__(self, spec: LabSpec):
        self.processes = pod_processes(spec)
        self.kubeconfig = str(pki.kubeconfig_path(spec, "resource-usage"))
        self.client = None  # connected at the first pass that reaches the API server
        self.readings: dict[str, Reading] = {}

    def publish(self) -> None:
        tree = ProcessTree()
        now = time.monotonic()
        usages: dict[tuple[str, str, str], list[dict]] = {}  # (namespace, pod, uid) -> containers
        seen = set()
        for name in self.processes.names():
            pid = self.processes.pid(name)
            if pid is None:
                continue
            namespace, pod, uid, container = name.split("_", 3)
            cpu_seconds, memory = tree.usage_below(pid)
            reading = Reading(cpu_seconds, now)
            cores = cpu_cores(self.readings.get(name), reading)
            self.readings[name] = reading
            seen.add(name)
            usages.setdefault((namespace, pod, uid), []).append(
                {"containers": [container], "usage": {"cpu": {"value": f"{cores * 1e6:.0f}u"},
                                                      "memory": {"value": str(memory)}}})
        for gone in set(self.readings) - seen:
            del self.readings[gone]
        self.client = self.client or cluster.dynamic(self.kubeconfig)
        resource = self.client.resources.get(api_version=API_VERSION, kind="ResourceUsage")
        for (namespace, pod, uid), containers in usages.items():
            body = {"apiVersion": API_VERSION, "kind": "ResourceUsage",
                    "metadata": {"name": pod, "namespace": namespace, "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}]},
                    "spec": {"usages": containers}}
            try:
                # Server-side apply: one call whether or not the object exists yet.
                self.client.server_side_apply(resource, body=body, name=pod, namespace=namespace,
                                              field_manager=FIELD_MANAGER, force_conflicts=True,
                                              _request_timeout=API_TIMEOUT)
            except ApiException as error:
                if error.status not in (404, 409, 422):  # the pod or its namespace is going: nothing to record
                    raise


def run(spec: LabSpec) -> None:
    log.info("started", interval_s=INTERVAL)
    control_loop.run(Publisher(spec).publish, INTERVAL, log, explain=_explain)


def _explain(error: Exception) -> str | None:
    if isinstance(error, ResourceNotFoundError):
        return "kwok's ResourceUsage resource is not installed"
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m opslab.lab.resource_usage", description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, type=Path, help="the lab's home folder")
    run(LabSpec(paths=Paths(parser.parse_args(argv).home.resolve())))


if __name__ == "__main__":
    main()
