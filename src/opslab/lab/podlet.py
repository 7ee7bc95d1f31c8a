"""The lab's pod runner, in the kubelet's place: every pod on the lab's nodes becomes what its
image says (`runtimes`), and the pod's status follows what really happens.

A process-backed pod gets its own network namespace with the address from its node's pod range,
a process per container with the environment resolved from its spec, probes, restarts with
back-off (CrashLoopBackOff), Events, and kwok's Exec, Logs and PortForward objects so that
`kubectl exec`, `logs` and `port-forward` reach it. When the pod goes, so does everything it had.

    python -m opslab.lab.podlet --home .opslab
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
from kubernetes.dynamic.exceptions import ApiException, ConflictError, NotFoundError

from mlops_platform.logs import JsonLog
from opslab import cluster
from opslab.lab import podenv, podnet, runtimes
from opslab.lab.network import POD_NAMESPACE_PREFIX, namespaces
from opslab.lab.processes import Command, Supervisor
from opslab.lab.spec import LabSpec, Paths

TIMEOUT = 10
# A round runs as soon as a pod changes (at most every MIN_ROUND_SECONDS) and at least every
# IDLE_ROUND_SECONDS, for probes and back-off timers; listing every pod four times a second
# instead cost a sixth of a core.
MIN_ROUND_SECONDS, IDLE_ROUND_SECONDS = 0.2, 1.0
WATCH_SECONDS = 60
BACKOFF_START, BACKOFF_CAP = 5.0, 80.0  # the kubelet's 10 s to 5 min, shortened for lessons
BACKOFF_RESET_AFTER = 120.0  # running this long without a crash forgives earlier crashes
KILL_GRACE_CAP = 10.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HEALTH_PORT = 10248  # the kubelet's healthz port
UNHEALTHY_EVENT_EVERY = 30
ORPHAN_SWEEP_SECONDS = 5.0
log = JsonLog("podlet")  # the lab's components share the platform's JSON log lines


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerState:
    program: runtimes.Program | None  # None: simulated, nothing runs
    restarts: int = 0
    started_at: str | None = None
    started_monotonic: float = 0.0
    ready: bool = False
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    last_terminated: dict | None = None
    finished: dict | None = None  # final termination, when the restart policy says no more
    backoff_until: float = 0.0
    probes: dict[str, ProbeState] = field(default_factory=dict)


@dataclass
class ProbeState:
    due: float
    failures: int = 0
    successes: int = 0


@dataclass
class PodState:
    ip: str
    netns: str | None
    scratch: Path
    containers: dict[str, ContainerState]
    transitions: dict[str, str] = field(default_factory=dict)  # condition type -> last change


def process_name(pod: dict, container: str) -> str:
    meta = pod["metadata"]
    return f"{meta['namespace']}_{meta['name']}_{meta['uid']}_{container}"


def _uid_of(process: str) -> str:
    return process.split("_")[2]


def pod_processes(spec: LabSpec) -> Supervisor:
    """The supervisor of every container's monitor; `lab down` stops what a dead podlet left.
    Its own log folder holds the monitors' output; the containers' logs are in `container_log`."""
    home = spec.paths.home / "pods"
    return Supervisor(home / "run", home / "monitors", isolated=True)


def container_log(spec: LabSpec, process: str) -> Path:
    return spec.paths.home / "pods" / "logs" / f"{process}.log"


class Podlet:
    def __init__(self, spec: LabSpec):
        self.spec = spec
        self.home = spec.paths.home / "pods"
        self.supervisor = pod_processes(spec)
        self.client = cluster.dynamic(str(spec.paths.kubeconfig))
        self.pods_api = self.client.resources.get(api_version="v1", kind="Pod")
        self.nodes_api = self.client.resources.get(api_version="v1", kind="Node")
        self.events_api = self.client.resources.get(api_version="v1", kind="Event")
        self.services_api = self.client.resources.get(api_version="v1", kind="Service")
        self.kwok = {kind: self.client.resources.get(api_version="kwok.x-k8s.io/v1alpha1", kind=kind)
                     for kind in ("Exec", "Logs", "PortForward")}
        self.state: dict[str, PodState] = {}
        self.pods_changed = threading.Event()
        self.last_address: dict[str, str] = {}  # per pod range, the address handed out last
        self.last_loop = time.monotonic()
        self.last_sweep = 0.0
        # Addresses already on pod namespaces: a pod set up by an earlier podlet keeps its own.
        self.configured = podnet.existing_addresses()

    # --- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        threading.Thread(target=self._serve_health, daemon=True).start()
        threading.Thread(target=self._watch_pods, daemon=True).start()
        while True:
            try:
                self.reconcile()
            except (ApiException, requests.RequestException, OSError, cluster.ClusterError) as error:
                log.warning("cannot reach the API server; retrying", error=str(error)[:300])
                time.sleep(1)
            self.last_loop = time.monotonic()
            time.sleep(MIN_ROUND_SECONDS)
            self.pods_changed.wait(IDLE_ROUND_SECONDS)
            self.pods_changed.clear()

    def _watch_pods(self) -> None:
        """Wakes the loop whenever any pod changes."""
        while True:
            try:
                for _ in self.pods_api.watch(timeout=WATCH_SECONDS):
                    self.pods_changed.set()
            except Exception as error:  # a broken watch is opened again; the loop still runs each second
                log.debug("pod watch ended", error=str(error)[:200])
                time.sleep(1)

    def reconcile(self) -> None:
        nodes = {n["metadata"]["name"]: n for n in self._list("/api/v1/nodes")}
        pods = [p for p in self._list("/api/v1/pods") if p["spec"].get("nodeName") in nodes]
        live = {p["metadata"]["uid"] for p in pods}
        for pod in pods:
            try:
                if pod["metadata"].get("deletionTimestamp"):
                    self.terminate(pod)
                else:
                    self.sync(pod, nodes[pod["spec"]["nodeName"]], pods)
            except (NotFoundError, ConflictError):
                pass  # changed under us; the next round sees the new version
            except Exception as error:  # one pod's trouble must not stop every other pod
                log.error("pod sync failed", pod=pod["metadata"]["name"], error=f"{type(error).__name__}: {error}"[:500])
        for uid in set(self.state) - live:
            self._release(uid)  # force-deleted: gone from the API without passing terminate()
        if time.monotonic() - self.last_sweep > ORPHAN_SWEEP_SECONDS:
            self._collect_orphans(live)
            self.last_sweep = time.monotonic()

    def _list(self, path: str) -> list[dict]:
        """A list as plain JSON: four times a second, the client's object wrapping costs a core."""
        return self.client.client.get_json(path, timeout=TIMEOUT)["items"]

    def _collect_orphans(self, live: set[str]) -> None:
        """Processes and namespaces of pods that no longer exist, left by an earlier podlet,
        are stopped and removed."""
        for name in self.supervisor.names():
            if _uid_of(name) not in live:
                self.supervisor.stop(name)
        short = {podnet.netns_name(uid) for uid in live}
        for ns in namespaces():
            if ns.startswith(POD_NAMESPACE_PREFIX) and ns not in short:
                podnet.detach(self.spec.network, ns[len(POD_NAMESPACE_PREFIX):])
                self.configured.pop(ns, None)

    # --- a pod's life --------------------------------------------------------------------
    def sync(self, pod: dict, node: dict, pods: list[dict]) -> None:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        state = self.state.get(pod["metadata"]["uid"]) or self._admit(pod, node, pods)
        for container in pod["spec"]["containers"]:
            self._sync_container(pod, state, container)
        self._publish(pod, state, node)

    def _admit(self, pod: dict, node: dict, pods: list[dict]) -> PodState:
        meta, status = pod["metadata"], pod.get("status") or {}
        scratch = self.home / "scratch" / meta["uid"]
        volume = self.spec.paths.home / "volumes" / meta["namespace"] / meta["name"]
        previous = {c["name"]: c for c in status.get("containerStatuses") or []}
        containers = {}
        for container in pod["spec"]["containers"]:
            program = runtimes.program_for(container["image"], volume, scratch)
            state = ContainerState(program, restarts=previous.get(container["name"], {}).get("restartCount", 0))
            if program is None or self.supervisor.pid(process_name(pod, container["name"])):
                # Simulated, or still running from an earlier podlet: carry on where it was.
                state.started_at, state.waiting = status.get("startTime") or now_rfc3339(), None
                state.started_monotonic = time.monotonic()
                state.ready = program is None or previous.get(container["name"], {}).get("ready", False)
                _arm_probes(state, container)
            containers[container["name"]] = state
        cidr = node["spec"]["podCIDR"]
        address = (status.get("podIP") or self.configured.get(podnet.netns_name(meta["uid"]))
                   or podnet.allocate(cidr, self._used_addresses(node, pods), self.last_address.get(cidr)))
        self.last_address[cidr] = address
        netns = None
        if any(c.program for c in containers.values()):
            scratch.mkdir(parents=True, exist_ok=True)
            netns = podnet.attach(self.spec.network, meta["uid"], address, meta["namespace"], self._dns_ip())
            self._publish_debugging(pod, address, scratch, netns)
        state = PodState(address, netns, scratch, containers)
        self.state[meta["uid"]] = state
        self._publish(pod, state, node)  # the address is on record before anything starts
        return state

    def _used_addresses(self, node: dict, pods: list[dict]) -> set[str]:
        name = node["metadata"]["name"]
        used = {(p.get("status") or {}).get("podIP") for p in pods if p["spec"].get("nodeName") == name}
        return used | {s.ip for s in self.state.values()} | set(self.configured.values())

    def _dns_ip(self) -> str:
        service = self.services_api.get(name="kube-dns", namespace="kube-system", _request_timeout=TIMEOUT)
        return service.spec.clusterIP

    def _sync_container(self, pod: dict, state: PodState, container: dict) -> None:
        name, cs = container["name"], state.containers[container["name"]]
        if cs.program is None or cs.finished:
            return
        process = process_name(pod, name)
        code = self.supervisor.exit_code(process)
        if code is not None:
            self._exited(pod, container, cs, code)
        if cs.finished:
            return
        if self.supervisor.pid(process) is not None:
            self._probe(pod, state, container, cs, process)
            if time.monotonic() - cs.started_monotonic > BACKOFF_RESET_AFTER:
                cs.backoff_until = 0.0
            return
        if time.monotonic() < cs.backoff_until:
            return
        self._start(pod, state, container, cs, process)

    def _exited(self, pod: dict, container: dict, cs: ContainerState, code: int) -> None:
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                      "startedAt": cs.started_at, "finishedAt": now_rfc3339(),
                      "containerID": f"opslab://{pod['metadata']['uid']}/{container['name']}"}
        cs.started_at, cs.ready, cs.probes = None, False, {}
        policy = pod["spec"].get("restartPolicy", "Always")
        if policy == "Never" or (policy == "OnFailure" and code == 0):
            cs.finished = terminated
            return
        cs.last_terminated = terminated
        cs.restarts += 1
        ran_long = cs.backoff_until == 0.0 and cs.restarts > 1
        delay = BACKOFF_START if ran_long else min(BACKOFF_START * 2 ** (cs.restarts - 1), BACKOFF_CAP)
        cs.backoff_until = time.monotonic() + delay
        message = f"back-off {delay:.0f}s restarting failed container={container['name']} pod={pod['metadata']['name']}"
        cs.waiting = ("CrashLoopBackOff", message)
        self._event(pod, "Warning", "BackOff", f"Back-off restarting failed container {container['name']}",
                    container["name"])

    def _start(self, pod: dict, state: PodState, container: dict, cs: ContainerState, process: str) -> None:
        # The API may not show the pod's address yet: the container sees the one it has.
        seen = {**pod, "status": {**(pod.get("status") or {}), "podIP": state.ip}}
        try:
            env = podenv.environment(seen, container, partial(self._read, pod["metadata"]["namespace"]))
        except podenv.EnvError as error:
            cs.waiting = ("CreateContainerConfigError", str(error))
            self._event(pod, "Warning", "Failed", f"Error: {error}", container["name"])
            return
        env = {**self._base_env(pod, state), **env, **cs.program.env, "IMAGE": container["image"]}
        self._write_exec_env(state, container["name"], env)
        log_file = container_log(self.spec, process)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        monitor = [sys.executable, "-m", "opslab.lab.conmon", str(log_file), "--", *cs.program.argv]
        self.supervisor.start(Command(process, monitor, env=env, netns=state.netns))
        cs.started_at, cs.started_monotonic, cs.waiting = now_rfc3339(), time.monotonic(), None
        cs.ready = not container.get("readinessProbe")
        _arm_probes(cs, container)
        image = container["image"]
        self._event(pod, "Normal", "Pulled", f'Container image "{image}" already present on machine', container["name"])
        self._event(pod, "Normal", "Started", f"Started container {container['name']}", container["name"])

    def _base_env(self, pod: dict, state: PodState) -> dict[str, str]:
        """What every container gets besides its spec: the kubelet's variables for the API
        server, and the Service links of its namespace, all at addresses inside the lab."""
        env = {"PATH": f"{Path(sys.executable).parent}:{PATH}", "HOME": "/root", "LANG": "C.UTF-8",
               "PYTHONUNBUFFERED": "1", "HOSTNAME": pod["metadata"]["name"]}
        if pod["spec"].get("enableServiceLinks", True):
            services = self.services_api.get(namespace=pod["metadata"]["namespace"], _request_timeout=TIMEOUT)
            for service in services.to_dict()["items"]:
                ip = service["spec"].get("clusterIP")
                if not ip or ip == "None":
                    continue
                prefix = service["metadata"]["name"].upper().replace("-", "_")
                env[f"{prefix}_SERVICE_HOST"] = ip
                env[f"{prefix}_SERVICE_PORT"] = str(service["spec"]["ports"][0]["port"])
        kubernetes_ip = self.services_api.get(name="kubernetes", namespace="default", _request_timeout=TIMEOUT)
        env.update(KUBERNETES_SERVICE_HOST=kubernetes_ip.spec.clusterIP, KUBERNETES_SERVICE_PORT="443")
        return env

    def _read(self, namespace: str, kind: str, name: str) -> dict[str, str] | None:
        api = self.client.resources.get(api_version="v1", kind="Secret" if kind == "secret" else "ConfigMap")
        try:
            obj = api.get(name=name, namespace=namespace, _request_timeout=TIMEOUT).to_dict()
        except NotFoundError:
            return None
        return podenv.secret_data(obj) if kind == "secret" else dict(obj.get("data") or {})

    def _probe(self, pod: dict, state: PodState, container: dict, cs: ContainerState, process: str) -> None:
        for kind, probe_state in cs.probes.items():
            probe = container[kind]
            if time.monotonic() < probe_state.due:
                continue
            probe_state.due = time.monotonic() + probe.get("periodSeconds", 10)
            ok, detail = run_probe(probe, state.ip, container, state.netns)
            if ok:
                probe_state.failures, probe_state.successes = 0, probe_state.successes + 1
            else:
                probe_state.failures, probe_state.successes = probe_state.failures + 1, 0
                if probe_state.failures % UNHEALTHY_EVENT_EVERY == 1:  # the kubelet aggregates them too
                    self._event(pod, "Warning", "Unhealthy", f"{kind[:-5].capitalize()} probe failed: {detail}",
                                container["name"])
            if kind == "readinessProbe":
                if ok and probe_state.successes >= probe.get("successThreshold", 1):
                    cs.ready = True
                elif not ok and probe_state.failures >= probe.get("failureThreshold", 3):
                    cs.ready = False
            elif not ok and probe_state.failures >= probe.get("failureThreshold", 3):
                self._event(pod, "Normal", "Killing",
                            f"Container {container['name']} failed liveness probe, will be restarted",
                            container["name"])
                self.supervisor.stop(process, grace=self._grace(pod))
                # A stopped child is reaped by stop(); count it as exited.
                self._exited(pod, container, cs, 137)

    # --- status ----------------------------------------------------------------------------
    def _publish(self, pod: dict, state: PodState, node: dict) -> None:
        status = self._status(pod, state, node)
        current = pod.get("status") or {}
        if all(current.get(k) == v for k, v in status.items()):
            return
        self.pods_api.status.patch(body={"status": status}, name=pod["metadata"]["name"],
                                   namespace=pod["metadata"]["namespace"],
                                   content_type="application/merge-patch+json", _request_timeout=TIMEOUT)

    def _status(self, pod: dict, state: PodState, node: dict) -> dict:
        statuses = [self._container_status(pod, c, state.containers[c["name"]]) for c in pod["spec"]["containers"]]
        finished = [cs.finished for cs in state.containers.values()]
        if all(finished):
            phase = "Succeeded" if all(f["exitCode"] == 0 for f in finished) else "Failed"
        elif any(cs.started_at or cs.last_terminated for cs in state.containers.values()):
            phase = "Running"
        else:
            phase = "Pending"
        ready = phase == "Running" and all(s["ready"] for s in statuses)
        current = {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}
        wanted = {"PodReadyToStartContainers": True, "Initialized": True, "ContainersReady": ready,
                  "Ready": ready, "PodScheduled": True}
        conditions = []
        for kind, value in wanted.items():
            text = "True" if value else "False"
            previous = current.get(kind, {})
            changed = previous.get("status") != text
            conditions.append({"type": kind, "status": text,
                               "lastTransitionTime": now_rfc3339() if changed else previous.get("lastTransitionTime")})
        host_ip = next((a["address"] for a in (node.get("status") or {}).get("addresses") or []
                        if a["type"] == "InternalIP"), self.spec.network.host_ip)
        return {
            "phase": phase, "conditions": conditions, "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
            "podIP": state.ip, "podIPs": [{"ip": state.ip}],
            "startTime": (pod.get("status") or {}).get("startTime") or now_rfc3339(),
            "containerStatuses": statuses,
        }

    def _container_status(self, pod: dict, container: dict, cs: ContainerState) -> dict:
        if cs.finished:
            current = {"terminated": cs.finished}
        elif cs.started_at:
            current = {"running": {"startedAt": cs.started_at}}
        else:
            reason, message = cs.waiting or ("ContainerCreating", "")
            current = {"waiting": {"reason": reason, "message": message} if message else {"reason": reason}}
        image = container["image"]
        digest = hashlib.sha256(image.encode()).hexdigest()
        return {
            "name": container["name"], "image": image, "imageID": f"{runtimes.repository(image)}@sha256:{digest}",
            "containerID": f"opslab://{pod['metadata']['uid']}/{container['name']}",
            "ready": bool(cs.ready and cs.started_at), "started": bool(cs.started_at),
            "restartCount": cs.restarts, "state": current,
            "lastState": {"terminated": cs.last_terminated} if cs.last_terminated else {},
        }

    # --- ending a pod ----------------------------------------------------------------------
    def _grace(self, pod: dict) -> float:
        return min(float(pod["spec"].get("terminationGracePeriodSeconds", 30)), KILL_GRACE_CAP)

    def terminate(self, pod: dict) -> None:
        meta = pod["metadata"]
        for container in pod["spec"]["containers"]:
            process = process_name(pod, container["name"])
            if self.supervisor.pid(process) is not None:
                self._event(pod, "Normal", "Killing", f"Stopping container {container['name']}", container["name"])
            self.supervisor.stop(process, grace=self._grace(pod))
        self._release(meta["uid"])
        try:
            self.pods_api.delete(name=meta["name"], namespace=meta["namespace"],
                                 body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
                                 _request_timeout=TIMEOUT)
        except (NotFoundError, ConflictError):
            pass

    def _release(self, uid: str) -> None:
        """Everything the pod had: its processes, namespace and scratch space."""
        state = self.state.pop(uid, None)
        self.configured.pop(podnet.netns_name(uid), None)
        for name in self.supervisor.names():
            if _uid_of(name) == uid:
                self.supervisor.stop(name)
        podnet.detach(self.spec.network, uid)
        if state:
            shutil.rmtree(state.scratch, ignore_errors=True)

    # --- kubectl exec, logs and port-forward, through kwok ------------------------------------
    def _publish_debugging(self, pod: dict, address: str, scratch: Path, netns: str) -> None:
        meta = pod["metadata"]
        owner = [{"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}]
        containers = pod["spec"]["containers"]
        specs = {
            "Exec": {"execs": [{"containers": [c["name"]], "local": {"workDir": str(scratch), "envs": [
                {"name": "OPSLAB_POD_NETNS", "value": netns},
                {"name": "OPSLAB_POD_ENV", "value": str(scratch / f"{c['name']}.env")}]}} for c in containers]},
            "Logs": {"logs": [{"containers": [c["name"]], "follow": True,
                               "logsFile": str(container_log(self.spec, process_name(pod, c["name"])))}
                              for c in containers]},
            "PortForward": {"forwards": [{"ports": [p["containerPort"]],
                                          "target": {"port": p["containerPort"], "address": address}}
                                         for c in containers for p in c.get("ports") or []]},
        }
        for kind, spec in specs.items():
            body = {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": kind, "spec": spec,
                    "metadata": {"name": meta["name"], "namespace": meta["namespace"], "ownerReferences": owner}}
            try:
                self.kwok[kind].create(body=body, namespace=meta["namespace"], _request_timeout=TIMEOUT)
            except ConflictError:  # left by an earlier pod of the same name: take it over
                live = self.kwok[kind].get(name=meta["name"], namespace=meta["namespace"], _request_timeout=TIMEOUT)
                body["metadata"]["resourceVersion"] = live.metadata.resourceVersion
                self.kwok[kind].replace(body=body, namespace=meta["namespace"], _request_timeout=TIMEOUT)

    def _write_exec_env(self, state: PodState, container: str, env: dict[str, str]) -> None:
        """The container's environment for `kubectl exec` sessions; readable by root only."""
        path = state.scratch / f"{container}.env"
        path.touch(mode=0o600, exist_ok=True)
        path.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))

    # --- events and health -----------------------------------------------------------------
    def _event(self, pod: dict, kind: str, reason: str, message: str, container: str) -> None:
        meta, now = pod["metadata"], now_rfc3339()
        body = {
            "apiVersion": "v1", "kind": "Event", "type": kind, "reason": reason, "message": message,
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"],
                               "fieldPath": f"spec.containers{{{container}}}"},
            "source": {"component": "kubelet", "host": pod["spec"].get("nodeName")},
            "reportingComponent": "kubelet", "reportingInstance": pod["spec"].get("nodeName"),
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self.events_api.create(body=body, namespace=meta["namespace"], _request_timeout=TIMEOUT)
        except ApiException:
            pass  # an event is worth trying, not worth failing the pod over

    def _serve_health(self) -> None:
        podlet = self

        class Health(BaseHTTPRequestHandler):
            def do_GET(self):
                fresh = time.monotonic() - podlet.last_loop < 10
                self.send_response(200 if fresh else 503)
                self.end_headers()
                self.wfile.write(b"ok" if fresh else b"reconcile loop stalled")

            def log_message(self, *args):
                pass

        ThreadingHTTPServer(("127.0.0.1", HEALTH_PORT), Health).serve_forever()


def _arm_probes(cs: ContainerState, container: dict) -> None:
    cs.probes = {kind: ProbeState(due=time.monotonic() + container[kind].get("initialDelaySeconds", 0))
                 for kind in ("readinessProbe", "livenessProbe") if container.get(kind)}


def run_probe(probe: dict, address: str, container: dict, netns: str | None) -> tuple[bool, str]:
    timeout = probe.get("timeoutSeconds", 1)
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = ports.get(get["port"], get["port"])
            url = f"http://{get.get('host') or address}:{port}{get.get('path', '/')}"
            response = requests.get(url, timeout=timeout)
            return 200 <= response.status_code < 400, f"HTTP probe failed with statuscode: {response.status_code}"
        if "tcpSocket" in probe:
            port = ports.get(probe["tcpSocket"]["port"], probe["tcpSocket"]["port"])
            with socket.create_connection((address, int(port)), timeout=timeout):
                return True, ""
        if "exec" in probe and netns:
            result = subprocess.run(["ip", "netns", "exec", netns, *probe["exec"]["command"]],
                                    capture_output=True, timeout=timeout)
            return result.returncode == 0, result.stdout.decode(errors="replace")[-200:]
    except (requests.RequestException, OSError, subprocess.TimeoutExpired) as error:
        return False, str(error)[:200]
    return True, ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, type=Path, help="the lab's home folder")
    args = parser.parse_args(argv)
    Podlet(LabSpec(paths=Paths(args.home.resolve()))).run()


if __name__ == "__main__":
    main()
