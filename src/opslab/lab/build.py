"""`opslab lab build`: the lab's binaries from the official Go modules, pinned in gobuild/go.mod.

Binaries are cached outside the checkout under a key made of the pins and the Go version, so
they are rebuilt only when a pin (or Go itself) changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

GOBUILD = Path(__file__).parent / "gobuild"

# Binary name -> Go package; each pin and the Go version it needs is in gobuild/go.mod.
BINARIES = {
    "etcd": "go.etcd.io/etcd/server/v3",
    "etcdctl": "go.etcd.io/etcd/etcdctl/v3",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
    "kwok": "sigs.k8s.io/kwok/cmd/kwok",
    "coredns": "./cmd/coredns",  # CoreDNS's own module, with the lab's choice of plugins
    "prometheus": "github.com/prometheus/prometheus/cmd/prometheus",
    "promtool": "github.com/prometheus/prometheus/cmd/promtool",
    "kube-state-metrics": "k8s.io/kube-state-metrics/v2",
    "metrics-server": "sigs.k8s.io/metrics-server/cmd/metrics-server",
}
# Binaries built in a module of their own, a folder under gobuild/ with its own go.mod: each needs
# the k8s.io/* versions it was released with, not the control plane's pins (see each go.mod).
OWN_MODULES = {"prometheus": "prometheus", "promtool": "prometheus", "kube-state-metrics": "kube-state-metrics",
               "metrics-server": "metrics-server"}

# kwok ships its stages and CRDs as manifests in its module. kwok keeps the nodes alive; pods
# are the lab's pod runner's (podlet), which publishes the Exec, Logs and PortForward objects.
# The node-initialize stage is the lab's own (manifests/kwok-node-initialize.yaml): kwok's wipes
# the addresses of a node that has no Hostname address, and kube-proxy exits when they change.
# kwok also plays each node's kubelet resource metrics (its Metric `metrics-resource`, read from
# its configuration file) from the ResourceUsage objects the lab's resource-usage publisher writes.
KWOK_MANIFESTS = {
    "kwok-node-heartbeat.yaml": ("kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",),
    "kwok-crds.yaml": tuple(f"kustomize/crd/bases/kwok.x-k8s.io_{name}.yaml"
                            for name in ("execs", "logs", "portforwards", "resourceusages")),
    "kwok-metrics.yaml": ("kustomize/metrics/resource/metrics-resource.yaml",),
}
KWOK_HEARTBEAT_FILE, KWOK_CRDS_FILE, KWOK_METRICS_FILE = KWOK_MANIFESTS


class BuildError(RuntimeError):
    """A binary could not be built, or Go is missing or too old."""


def _go(*args: str, timeout: float = 3600, module: str = "") -> str:
    if not shutil.which("go"):
        raise BuildError("Go is not installed: the lab's binaries are built with `go build` (Go >= 1.26).")
    env = {**os.environ, "GOFLAGS": "-buildvcs=false"}
    result = subprocess.run(["go", *args], cwd=GOBUILD / module, capture_output=True, text=True,
                            timeout=timeout, env=env)
    if result.returncode != 0:
        raise BuildError(f"`go {' '.join(args)}` failed:\n{result.stderr.strip()[-4000:]}")
    return result.stdout.strip()


def cache_root() -> Path:
    return Path(os.environ.get("OPSLAB_CACHE", Path.home() / ".cache" / "opslab"))


def bin_dir() -> Path:
    """The folder for the current pins: a new pin, source file or Go version gives a new folder."""
    digest = hashlib.sha256()
    for path in sorted(p for p in GOBUILD.rglob("*") if p.is_file()):
        digest.update(path.relative_to(GOBUILD).as_posix().encode() + path.read_bytes())
    digest.update(_go("env", "GOVERSION").encode())
    return cache_root() / "bin" / digest.hexdigest()[:16]


def missing(directory: Path) -> list[str]:
    wanted = [*BINARIES, *KWOK_MANIFESTS]
    return [name for name in wanted if not (directory / name).exists()]


def _write_kwok_manifest(directory: Path, name: str) -> None:
    module_dir = Path(_go("list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"))
    documents = [(module_dir / path).read_text().strip() for path in KWOK_MANIFESTS[name]]
    (directory / name).write_text("\n---\n".join(documents) + "\n")


def build(out=sys.stdout) -> Path:
    """Build whatever binary the current pins lack, showing progress; returns their folder."""
    directory = bin_dir()
    todo = missing(directory)
    if not todo:
        print(f"lab binaries are up to date in {directory}", file=out)
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    print(f"building {len(todo)} lab binaries into {directory} with {_go('env', 'GOVERSION')}", file=out)
    _go("mod", "download")
    for number, name in enumerate(todo, 1):
        started = time.monotonic()
        print(f"[{number}/{len(todo)}] {name} ...", end="", flush=True, file=out)
        if name in KWOK_MANIFESTS:
            _write_kwok_manifest(directory, name)
        else:
            partial = directory / f".{name}.partial"
            _go("build", "-o", str(partial), BINARIES[name], module=OWN_MODULES.get(name, ""))
            partial.rename(directory / name)
        print(f" {time.monotonic() - started:.0f}s", file=out, flush=True)
    return directory


def installed() -> Path:
    """The built binaries' folder; a clear error when `opslab lab build` has not run."""
    directory = bin_dir()
    absent = missing(directory)
    if absent:
        raise BuildError(f"lab binaries missing ({', '.join(absent)}): run `opslab lab build` first.")
    return directory
