"""`opslab lab up | status | down | reset | env`: the embedded lab's life cycle."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from opslab import cluster, environments
from opslab.config import ConfigError, read_state, render_exports, state_file
from opslab.environments import INFRASTRUCTURE as PLATFORM
from opslab.errors import OpslabError
from opslab.lab import baseline, build, monitoring, network, pki
from opslab.lab.certificates import ensure_lab_ca
from opslab.lab.components import Component, components, write_configs
from opslab.lab.podlet import pod_processes
from opslab.lab.processes import Supervisor, rss_bytes
from opslab.lab.spec import NODE_NAMES, LabSpec
from opslab.waiting import NotYet, eventually

MANIFESTS = Path(__file__).parent / "manifests"
TOOLS = ("promtool", "etcdctl")  # on the PATH of `opslab lab env` and of notebooks' `!` lines; amtool is Debian's
LAB_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease", "cert-manager", "monitoring",
                  *map(environments.home_namespace, environments.ENVIRONMENTS)}
PLATFORM_TIMEOUT = 180
START_TIMEOUT = 90
READY_TIMEOUT = 60


def manifests_digest() -> str:
    """Names what `up` deploys: the lab's own manifests and the platform's."""
    digest = hashlib.sha256()
    for path in sorted([*MANIFESTS.rglob("*.yaml"), *PLATFORM.rglob("*.yaml")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class LabError(OpslabError):
    """The lab cannot do what was asked; the message says why and what to do."""


def _port_owner(port: int) -> str:
    result = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=10)
    users = " ".join(result.stdout.split()[5:]) if result.stdout.strip() else ""
    return users or "another process"


def _check_port_free(address: str, port: int) -> None:
    with socket.socket() as probe:
        # As the components do: connections of a killed process in TIME_WAIT must not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise LabError(f"port {address}:{port} is taken by {_port_owner(port)}; "
                               "stop it, or run `opslab lab down` if it is an old lab.") from error
            raise


def _changed_since_start(pid: int, argv: list[str]) -> str | None:
    """How a running component differs from what `up` would start now: another command line (a
    flag changed), a binary since replaced on disk (rebuilt), or, for a lab module run with
    `python -m`, its own source file changed since it started; None when it is the same."""
    try:
        running = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        executable = Path(f"/proc/{pid}/exe").readlink().as_posix()
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except OSError:
        return None  # gone meanwhile: the health check says so
    # The program by the file it is: `python` and `python3.11` of one venv are the same command.
    program = lambda name: os.path.realpath(shutil.which(name) or name)
    running_argv = [part.decode(errors="replace") for part in running]
    if running_argv[1:] != argv[1:] or program(running_argv[0]) != program(argv[0]):
        return "an older command line"
    if executable.endswith(" (deleted)"):
        return "a binary since rebuilt"
    if len(argv) > 2 and argv[1] == "-m" and argv[2].startswith("opslab.lab."):
        spec = importlib.util.find_spec(argv[2])
        started = _boot_time() + ticks / os.sysconf("SC_CLK_TCK")
        if spec and spec.origin and Path(spec.origin).stat().st_mtime > started:
            return f"older code than {Path(spec.origin).name}'s"
    return None


def _boot_time() -> float:
    return float(next(line for line in Path("/proc/stat").read_text().splitlines()
                      if line.startswith("btime ")).split()[1])


class Lab:
    def __init__(self, spec: LabSpec | None = None, out=sys.stdout):
        self.spec = spec or LabSpec.default()
        self.out = out
        self.supervisor = Supervisor(self.spec.paths.run, self.spec.paths.logs)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def components(self) -> list[Component]:
        binaries = build.installed()
        return [*components(self.spec, binaries), *monitoring.monitoring_components(self.spec, binaries)]

    # --- up -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _exclusive(self):
        """One `up`, `down` or `reset` at a time: two racing would start components twice."""
        self.spec.paths.home.mkdir(parents=True, exist_ok=True)
        with open(self.spec.paths.home / "lab.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def up(self) -> None:
        with self._exclusive():
            self._up()

    def _up(self) -> None:
        started = time.monotonic()
        binaries = build.installed()
        self._check_state_file()
        self._lay_network()
        pki.ensure(self.spec)
        write_configs(self.spec, binaries)
        monitoring.write_configs(self.spec)
        self._link_tools(binaries)
        starting = []
        for component in self.components():
            if component.needs_nodes:
                self._ensure_nodes()
            if self._ensure_running(component):
                if component.needed_by_the_rest:
                    self._await_healthy(component)
                else:
                    starting.append(component)
        for component in starting:
            self._await_healthy(component)
        self._ensure_nodes()
        self._ensure_baseline()
        state_file().write_text(render_exports(self.settings()))
        self.say(f"lab ready in {time.monotonic() - started:.1f}s")
        self.print_status()

    def _link_tools(self, binaries: Path) -> None:
        tools = self.spec.paths.tools
        tools.mkdir(parents=True, exist_ok=True)
        for name in TOOLS:
            link = tools / name
            if not (link.is_symlink() and link.readlink() == binaries / name):
                link.unlink(missing_ok=True)
                link.symlink_to(binaries / name)

    def _check_state_file(self) -> None:
        try:
            read_state()
        except ConfigError as error:
            self.say(f"replacing the lab's unreadable state file: {error}")

    def _lay_network(self) -> None:
        net = self.spec.network
        clashes = network.overlaps(net)
        if clashes:
            raise LabError("the lab's address ranges collide with this machine's network:\n  "
                           + "\n  ".join(clashes) + "\nChange the ranges in opslab/lab/spec.py.")
        network.ensure(net)

    def _ensure_running(self, component: Component) -> bool:
        """Start `component` unless it runs and is healthy; True when it was started."""
        name = component.name
        for manifest in component.prerequisites:  # every time: a reset may have removed them
            self._kubectl("apply", "--server-side", "--force-conflicts", "-f", str(manifest))
        pid = self.supervisor.pid(name)
        if pid is not None and (change := _changed_since_start(pid, component.command.argv)):
            self.say(f"{name} runs {change}; restarting it")
            self.supervisor.stop(name)
        elif pid is not None:
            if self._wait_healthy(component, limit=START_TIMEOUT):
                return False
            self.say(f"{name} is running but unhealthy; restarting it")
            self.supervisor.stop(name)
        if component.listen and not component.command.netns:  # the lab's own namespace is ours alone
            _check_port_free(*component.listen)
        if name == "kwok":
            self._release_node_leases()
        self.say(f"starting {name}")
        self.supervisor.start(component.command)
        return True

    def _await_healthy(self, component: Component) -> None:
        name = component.name
        if not self._wait_healthy(component, limit=START_TIMEOUT):
            log = self.supervisor.log_path(name)
            tail = "\n    ".join(log.read_text(errors="replace").splitlines()[-15:])
            what = "exited" if self.supervisor.pid(name) is None else f"was not healthy after {START_TIMEOUT}s"
            self.supervisor.stop(name)
            raise LabError(f"{name} {what}; the end of {log}:\n    {tail}")

    def _wait_healthy(self, component: Component, limit: float) -> bool:
        """True once the component answers healthy; False when it exited or `limit` passed."""
        def look() -> bool:
            if self.supervisor.exited_early(component.name):
                return False
            if not component.healthy(self.spec)[0]:
                raise NotYet(f"{component.name} is not healthy yet")
            return True
        try:
            return eventually(look, limit, interval=0.2)
        except TimeoutError:
            return False

    def _kubectl(self, *args: str, **kwargs):
        return cluster.kubectl(*args, config_file=str(self.spec.paths.kubeconfig), **kwargs)

    def _ensure_nodes(self) -> None:
        self._kubectl("apply", "--server-side", "--force-conflicts", "-f", str(MANIFESTS / "nodes.yaml"))

        def look() -> None:
            nodes = json.loads(self._kubectl("get", "nodes", "-o", "json").stdout)["items"]
            for node in nodes:
                if node["metadata"]["name"] in NODE_NAMES and not node.get("status", {}).get("addresses"):
                    self._restore_addresses(node["metadata"]["name"])
            ready = {n["metadata"]["name"] for n in nodes
                     if n["spec"].get("podCIDR") and n.get("status", {}).get("addresses")
                     and any(c["type"] == "Ready" and c["status"] == "True"
                             for c in n.get("status", {}).get("conditions", []))}
            if not ready >= set(NODE_NAMES):
                raise NotYet(f"nodes not Ready with a pod range: {sorted(set(NODE_NAMES) - ready)}")
        eventually(look, READY_TIMEOUT, interval=0.2, error=LabError)

    def _release_node_leases(self) -> None:
        """A new kwok waits for a dead one's node leases to expire before it takes them over;
        the nodes turn NotReady meanwhile, and pods cannot be scheduled. Deleted, they are
        taken at once."""
        self._kubectl("delete", "lease", "--namespace=kube-node-lease", "--ignore-not-found", *NODE_NAMES)

    def _restore_addresses(self, name: str) -> None:
        """What the node-initialize stage writes, written at once: a node without addresses and
        still Ready would otherwise wait up to ten minutes for kwok's next heartbeat."""
        addresses = [{"type": "InternalIP", "address": self.spec.network.host_ip}, {"type": "Hostname", "address": name}]
        self._kubectl("patch", "node", name, "--subresource=status", "--type=merge",
                      "-p", json.dumps({"status": {"addresses": addresses}}))

    def _client(self):
        return cluster.dynamic(str(self.spec.paths.kubeconfig))

    def _ensure_baseline(self) -> None:
        """The platform is deployed, and the baseline recorded, once per version of the
        manifests: a later `up` never overwrites what a trainee changed."""
        if self.spec.paths.baseline.exists() and json.loads(self.spec.paths.baseline.read_text()).get(
                "manifests") == manifests_digest():
            return
        self._deploy_platform()
        count = baseline.record(self._client(), self.spec.paths.baseline, manifests_digest(), LAB_NAMESPACES)
        self.say(f"recorded the baseline: {count} objects")

    def _deploy_platform(self) -> None:
        if not PLATFORM.exists():
            return
        started = time.monotonic()
        self.say("deploying the platform (infrastructure/: cluster, staging, production)")
        # The CRDs first: the ClusterIssuer beside them is accepted only once they are established.
        self._kubectl("apply", "--server-side", "--force-conflicts", "-k", str(PLATFORM / "cluster" / "crds"))
        self._kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s", timeout=70)
        self._kubectl("apply", "--server-side", "--force-conflicts", "-k", str(PLATFORM / "cluster"))
        ensure_lab_ca(str(self.spec.paths.kubeconfig), self.spec.paths.pki / "ca.crt", self.spec.paths.pki / "ca.key")
        # The monitoring host's Ingress and Certificate (its Services come with Prometheus).
        self._kubectl("apply", "--server-side", "--force-conflicts", "-f", str(MANIFESTS / "monitoring-ingress.yaml"))
        for environment in environments.ENVIRONMENTS:
            self._kubectl("apply", "--server-side", "--force-conflicts", "-k", str(PLATFORM / environment),
                          timeout=120)
        for environment in environments.ENVIRONMENTS:
            namespace = environments.home_namespace(environment)
            workloads = self._kubectl("get", "deployments,statefulsets", "-n", namespace, "-o", "name").stdout.split()
            for workload in workloads:
                self._kubectl("rollout", "status", workload, "-n", namespace, f"--timeout={PLATFORM_TIMEOUT}s",
                              timeout=PLATFORM_TIMEOUT + 10)
        self.say(f"platform ready in {time.monotonic() - started:.0f}s")

    # --- status ---------------------------------------------------------------------------
    def health(self) -> list[tuple[str, int | None, bool, str]]:
        rows = []
        for component in self.components():
            pid = self.supervisor.pid(component.name)
            ok, detail = component.healthy(self.spec) if pid else (False, "not running")
            rows.append((component.name, pid, ok, detail))
        return rows

    def print_status(self) -> bool:
        rows = self.health()
        by_name = {c.name: c for c in self.components()}
        self.say(f"{'component':<24} {'pid':>7} {'memory':>9}  {'listens on':<22} health")
        for name, pid, ok, detail in rows:
            listen = by_name[name].listen
            memory = f"{rss_bytes(pid) / 2**20:.0f} MiB" if pid else "-"
            self.say(f"{name:<24} {pid or '-':>7} {memory:>9}  {':'.join(map(str, listen or ('-',))):<22} "
                     f"{'ok' if ok else 'DOWN: ' + detail}")
        total = sum(rss_bytes(pid) for _, pid, _, _ in rows if pid)
        self.say(f"memory in all: {total / 2**20:.0f} MiB")
        for key, value in self.settings().items():
            self.say(f"{key}={value}")
        return all(ok for _, _, ok, _ in rows)

    def pids(self) -> set[int]:
        return {pid for name in self.supervisor.names() if (pid := self.supervisor.pid(name))}

    def memory_bytes(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids())

    # --- down, reset, env -----------------------------------------------------------------
    def down(self) -> None:
        with self._exclusive():
            self._down()

    def _down(self) -> None:
        for name in reversed([c.name for c in self.components()] + self._strays()):
            if self.supervisor.pid(name) is not None:
                self.say(f"stopping {name}")
            self.supervisor.stop(name)
        pods = pod_processes(self.spec)
        for name in pods.names():
            pods.stop(name)
        network.teardown(self.spec.network)
        state_file().unlink(missing_ok=True)
        # Without its kubeconfig no client aims at the lab's addresses while they are gone, when
        # the machine's default route would carry the packets away.
        self.spec.paths.kubeconfig.unlink(missing_ok=True)
        self.say("lab stopped; no lab process, namespace or link is left")

    def _strays(self) -> list[str]:
        known = {c.name for c in self.components()}
        return [n for n in self.supervisor.names() if n not in known]

    def reset(self) -> dict[str, list[str]]:
        with self._exclusive():
            return self._reset()

    def _reset(self) -> dict[str, list[str]]:
        started = time.monotonic()
        if not self.spec.paths.baseline.exists():
            raise LabError("no baseline recorded yet: run `opslab lab up` first.")
        down = [name for name, _, ok, _ in self.health() if not ok]
        if down:
            raise LabError(f"cannot reset while {', '.join(down)} is down: run `opslab lab up` first.")
        report = baseline.restore(self._client(), baseline.load(self.spec.paths.baseline)["objects"])
        self._ensure_nodes()  # a recreated node counts once it is Ready again
        self.say(f"reset in {time.monotonic() - started:.1f}s: " + ", ".join(
            f"{len(keys)} {what}" for what, keys in report.items()))
        return report

    def settings(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.spec.paths.kubeconfig), "OPSLAB_HOME": str(self.spec.paths.home),
                "INGRESS_ADDRESS": f"127.0.0.1:{self.spec.ports.ingress}",
                "PROMETHEUS_URL": monitoring.prometheus_url(self.spec),
                "ALERTMANAGER_URL": monitoring.alertmanager_url(self.spec),
                "ALERT_RECEIVER_URL": f"http://127.0.0.1:{self.spec.ports.alert_receiver}",
                "LAB_TOOLS": str(self.spec.paths.tools)}

    def env(self) -> str:
        """Shell exports of the settings, and the lab's tools first on PATH."""
        tools = shlex.quote(str(self.spec.paths.tools))
        return render_exports(self.settings()) + f'export PATH={tools}:"$PATH"\n'
