"""`opslab lab build`: the lab's binaries from the official Go modules, pinned in gobuild/go.mod.

Binaries are cached outside the checkout under a key made of the pins and the Go version, so
they are rebuilt only when a pin (or Go itself) changes.

Prometheus is built with its web UI compiled in, as its release binaries are: the UI's sources
ship in its Go module (web/ui), its npm dependencies come from the npm registry (`npm ci`
against the module's own package-lock.json), and the built assets are embedded with the
`builtinassets` build tag, from a writable copy of the module (the module cache is read-only).
The assets are cached on their own, by Prometheus version, so that a new Go version or pin
elsewhere relinks Prometheus without rebuilding its UI. Alertmanager is Debian's, whose package
leaves its web UI out: the UI's files come from the same version's Go module, where they are
committed (asset/assets_vfsdata.go), and are unpacked for its --web.ui-path.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from opslab.errors import OpslabError

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

# Beside the prometheus binary once it holds its web UI. A folder built before the UI was part of
# the build lacks it: `build` then rebuilds prometheus alone, and the lab runs meanwhile without it.
PROMETHEUS_UI_STAMP = "prometheus.web-ui"
PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
# The UI's packages, in build order: the PromQL grammar and editor, then the app (mantine-ui, the
# UI Prometheus 3 serves; the old react-app, kept only for --enable-feature=old-ui, is left out).
PROMETHEUS_UI_WORKSPACES = ("@prometheus-io/lezer-promql", "@prometheus-io/codemirror-promql",
                            "@prometheus-io/mantine-ui")
PROMETHEUS_UI_RECIPE = "1"  # bump when the way the assets are made changes
NPM_TIMEOUT = 1800
ALERTMANAGER = "prometheus-alertmanager"  # Debian's program
ALERTMANAGER_MODULE = "github.com/prometheus/alertmanager"


class BuildError(OpslabError):
    """A binary could not be built, or Go is missing or too old."""


def _go(*args: str, timeout: float = 3600, module: str = "", cwd: Path | None = None) -> str:
    if not shutil.which("go"):
        raise BuildError("Go is not installed: the lab's binaries are built with `go build` (Go >= 1.26).")
    env = {**os.environ, "GOFLAGS": "-buildvcs=false"}
    result = subprocess.run(["go", *args], cwd=cwd or GOBUILD / module, capture_output=True, text=True,
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
    """What `build` still has to make in `directory`."""
    wanted = [*BINARIES, *KWOK_MANIFESTS]
    absent = [name for name in wanted if not (directory / name).exists()]
    if "prometheus" not in absent and not (directory / PROMETHEUS_UI_STAMP).exists():
        absent.append("prometheus")  # built before its UI was: rebuilt with it
    return absent


def _write_kwok_manifest(directory: Path, name: str) -> None:
    module_dir = Path(_go("list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"))
    documents = [(module_dir / path).read_text().strip() for path in KWOK_MANIFESTS[name]]
    (directory / name).write_text("\n---\n".join(documents) + "\n")


def build(out=sys.stdout) -> Path:
    """Build whatever binary the current pins lack, showing progress; returns their folder."""
    directory = bin_dir()
    if shutil.which(ALERTMANAGER):  # Debian's, installed by scripts/setup.sh before this runs
        alertmanager_ui(ALERTMANAGER, out)
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
        elif name == "prometheus":
            print(" with its web UI", file=out, flush=True)
            try:
                _build_prometheus_with_ui(directory, out)
            except BuildError as error:
                # The lab runs without the UI (its API is all notebooks use); the next build tries again.
                _finish_removals(out)
                print(f"\nWARNING: Prometheus's web UI could not be built, so Prometheus is built without it:\n"
                      f"{error}", file=out, flush=True)
                if not (directory / name).exists():  # one without the UI stays as it is
                    _go("build", "-o", str(directory / ".prometheus.partial"), BINARIES[name], module=OWN_MODULES[name])
                    (directory / ".prometheus.partial").rename(directory / name)
            print(f"[{number}/{len(todo)}] prometheus ...", end="", file=out)
        else:
            partial = directory / f".{name}.partial"
            _go("build", "-o", str(partial), BINARIES[name], module=OWN_MODULES.get(name, ""))
            partial.rename(directory / name)
        print(f" {time.monotonic() - started:.0f}s", file=out, flush=True)
    return directory


def installed() -> Path:
    """The built binaries' folder; a clear error when `opslab lab build` has not run."""
    directory = bin_dir()
    absent = [name for name in [*BINARIES, *KWOK_MANIFESTS] if not (directory / name).exists()]
    if absent:
        raise BuildError(f"lab binaries missing ({', '.join(absent)}): run `opslab lab build` first.")
    return directory


# --- Prometheus with its web UI ----------------------------------------------------------------
def _run(argv: list[str], cwd: Path, timeout: float = NPM_TIMEOUT) -> None:
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "CI": "", "npm_config_update_notifier": "false"})
    except subprocess.TimeoutExpired as error:
        raise BuildError(f"`{' '.join(argv)}` did not finish within {timeout:.0f}s") from error
    if result.returncode != 0:
        raise BuildError(f"`{' '.join(argv)}` failed in {cwd}:\n{(result.stdout + result.stderr).strip()[-4000:]}")


def _step(out, what: str, action) -> None:
    started = time.monotonic()
    print(f"      {what} ...", end="", flush=True, file=out)
    action()
    print(f" {time.monotonic() - started:.0f}s", file=out, flush=True)


def prometheus_ui_assets(out=sys.stdout) -> Path:
    """Prometheus's web UI, built from the sources in its Go module, as the gzipped `static` folder
    its `builtinassets` build embeds; cached by Prometheus version and the lock file."""
    module = Path(_go("list", "-m", "-f", "{{.Dir}}", PROMETHEUS_MODULE, module="prometheus"))
    version = _go("list", "-m", "-f", "{{.Version}}", PROMETHEUS_MODULE, module="prometheus")
    lock = hashlib.sha256((module / "web/ui/package-lock.json").read_bytes() + PROMETHEUS_UI_RECIPE.encode())
    assets = cache_root() / "prometheus-ui" / f"{version}-{lock.hexdigest()[:12]}"
    if (assets / "static").is_dir():
        print(f"      web UI {version}: cached in {assets}", file=out, flush=True)
        return assets / "static"
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            raise BuildError(f"{tool} is not installed: Prometheus's web UI is built with Node.js and npm "
                             "(Debian's nodejs and npm; scripts/setup.sh installs them).")
    assets.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".prometheus-ui-", dir=assets.parent))
    try:
        ui = work / "ui"
        shutil.copytree(module / "web/ui", ui)
        for path in [ui, *ui.rglob("*")]:  # the module cache's files are read-only
            path.chmod(path.stat().st_mode | 0o200)
        _step(out, f"web UI {version}: npm ci (packages from the npm registry)",
              lambda: _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], ui))
        for workspace in PROMETHEUS_UI_WORKSPACES:
            _step(out, f"web UI: npm run build {workspace}", lambda w=workspace: _run(["npm", "run", "build", "-w", w], ui))
        static = work / "static"
        # As Prometheus's scripts/compress_assets.sh: each file gzipped, embedded as such.
        for path in sorted((ui / "mantine-ui" / "dist").rglob("*")):
            if path.is_file():
                target = static / "mantine-ui" / path.relative_to(ui / "mantine-ui" / "dist")
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "rb") as source, gzip.GzipFile(f"{target}.gz", "wb", mtime=0) as packed:
                    shutil.copyfileobj(source, packed)
        assets.mkdir(exist_ok=True)
        static.rename(assets / "static")  # whole or not at all: a build stopped halfway leaves no cache
    finally:
        # node_modules is some 40 000 files, which take a minute or more to remove on a busy disk:
        # removed while Go compiles, and waited for before `build` returns.
        _removals.append(threading.Thread(target=shutil.rmtree, args=(work,), kwargs={"ignore_errors": True}))
        _removals[-1].start()
    return assets / "static"


_removals: list[threading.Thread] = []


def _finish_removals(out) -> None:
    if any(thread.is_alive() for thread in _removals):
        _step(out, "removing the web UI's build folder", lambda: [thread.join() for thread in _removals])
    _removals.clear()


def _module_with_ui(static: Path) -> Path:
    """A writable copy of Prometheus's module with the UI's assets in web/ui/static and the
    embed.go that compress_assets.sh would write; kept beside the assets, at a fixed path, so a
    later build of the same version finds its packages in Go's build cache."""
    module = Path(_go("list", "-m", "-f", "{{.Dir}}", PROMETHEUS_MODULE, module="prometheus"))
    copy = static.parent / "module"
    if (copy / "web" / "ui" / "embed.go").exists():
        return copy
    shutil.rmtree(copy, ignore_errors=True)  # half made by a build that was stopped
    partial = static.parent / ".module.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(module, partial)
    for path in [partial, *partial.rglob("*")]:  # the module cache's files are read-only
        path.chmod(path.stat().st_mode | 0o200)
    ui = partial / "web" / "ui"
    shutil.copytree(static, ui / "static")
    embedded = sorted(p.relative_to(ui).as_posix() for p in (ui / "static").rglob("*.gz"))
    (ui / "embed.go").write_text((ui / "embed.go.tmpl").read_text() + "\n//go:embed " + " ".join(embedded)
                                 + "\nvar EmbedFS embed.FS\n")
    partial.rename(copy)
    return copy


def _build_prometheus_with_ui(directory: Path, out) -> None:
    static = prometheus_ui_assets(out)
    source = _module_with_ui(static)
    # The lab's module for Prometheus, its go.mod pointing at the copy.
    main = static.parent / "main"
    main.mkdir(exist_ok=True)
    for name in ("go.mod", "go.sum"):
        shutil.copy(GOBUILD / "prometheus" / name, main / name)
    _go("mod", "edit", f"-replace={PROMETHEUS_MODULE}={source}", cwd=main)
    partial = directory / ".prometheus.partial"
    _step(out, "go build -tags builtinassets", lambda: _go(
        "build", "-tags", "builtinassets", "-o", str(partial), f"{PROMETHEUS_MODULE}/cmd/prometheus", cwd=main))
    partial.rename(directory / "prometheus")
    (directory / PROMETHEUS_UI_STAMP).write_text(f"{static}\n")
    _finish_removals(out)


# --- Alertmanager's web UI ---------------------------------------------------------------------
_VFS_ENTRY = re.compile(r'"(/static/[^"]+)": &vfsgen۰(Compressed)?FileInfo\{(.*?)\n\t\t\}', re.S)
_VFS_CONTENT = re.compile(r'(?:compressedContent|content): +\[\]byte\("((?:[^"\\]|\\.)*)"\)', re.S)


def alertmanager_version(program: str) -> str:
    result = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=30)
    found = re.search(r"version (\d+\.\d+\.\d+)", result.stdout + result.stderr)
    if not found:
        raise BuildError(f"cannot read the version of {program}: {(result.stdout + result.stderr)[:200]!r}")
    return found.group(1)


def alertmanager_ui(program: str, out=sys.stdout) -> Path:
    """The web UI of this Alertmanager's version as files, for its --web.ui-path; cached."""
    version = alertmanager_version(program)
    folder = cache_root() / "alertmanager-ui" / version
    if (folder / "index.html").exists():
        print(f"Alertmanager {version}'s web UI is unpacked in {folder}", file=out)
        return folder
    started = time.monotonic()
    print(f"unpacking Alertmanager {version}'s web UI from its Go module ...", end="", flush=True, file=out)
    with tempfile.TemporaryDirectory() as empty:  # outside any module: a plain download
        download = _go("mod", "download", "-json", f"{ALERTMANAGER_MODULE}@v{version}", cwd=Path(empty))
    module = Path(re.search(r'"Dir": "([^"]+)"', download).group(1))
    source = (module / "asset" / "assets_vfsdata.go").read_text()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as work:
        count = 0
        for name, compressed, body in _VFS_ENTRY.findall(source):
            content = _VFS_CONTENT.search(body)
            if content is None:
                raise BuildError(f"no content for {name} in {module}/asset/assets_vfsdata.go")
            data = ast.literal_eval(f'b"{content.group(1)}"')
            target = Path(work) / name.removeprefix("/static/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(gzip.decompress(data) if compressed else data)
            count += 1
        if not (Path(work) / "index.html").exists() or not (Path(work) / "script.js").exists():
            raise BuildError(f"{module}/asset/assets_vfsdata.go holds no index.html and script.js")
        Path(work).chmod(0o755)
        Path(work).rename(folder)
        Path(work).mkdir()  # for the context manager to remove
    print(f" {count} files, {time.monotonic() - started:.0f}s", file=out, flush=True)
    return folder
