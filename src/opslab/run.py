"""`opslab run`: the curriculum's notebooks, executed headless with papermill, and a report.

Each notebook runs in a papermill process of its own, in the notebook's folder, on the python3
kernel of this environment. A cell has a time limit and so has the notebook as a whole, so one
stuck notebook cannot stall the run, and a broken one does not stop the next. Per-run values
(`namespace_suffix`, and whatever `--param` gives) reach each notebook's `parameters` cell
through papermill.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import nbformat

from opslab.config import lab_home, read_state
from opslab.errors import OpslabError
from opslab.report import NotebookResult, Report

WELCOME = Path("notebooks/00-welcome.ipynb")
MODULE_FOLDERS = "[0-9][0-9]-*"  # source/02-deployment/
CELL_TIMEOUT = 300  # s; a notebook's own waits (rollouts, alerts) are bounded below this
NOTEBOOK_TIMEOUT = 900  # s; a module is meant to run in a couple of minutes
KERNEL_START_TIMEOUT = 60  # s
SOURCE_LINES = 8  # of a failing cell, quoted in the report
TICK = 0.5  # s between looks at a running notebook
PROGRESS_EVERY = 15  # s between progress lines when the output is not a terminal
PAPERMILL_CELLS = {"injected-parameters", "papermill-error-cell-tag"}  # tags of cells papermill adds
EXCEPTION_LINE = re.compile(r"^(?:\w+\.)*(\w+(?:Error|Exception)): ?(.*)$", re.MULTILINE)


class RunError(OpslabError):
    """The run cannot start; the message says why."""


class InvalidNotebook(ValueError):
    """A file that is not a valid Jupyter notebook."""


@dataclass(frozen=True)
class Module:
    name: str  # its folder's name, e.g. `02-deployment`
    notebooks: tuple[Path, ...]


def curriculum(root: Path) -> list[Module]:
    """The welcome notebook (as module `00-welcome`), then each `source/NN-name/` in order."""
    modules = [Module("00-welcome", (root / WELCOME,))] if (root / WELCOME).is_file() else []
    for folder in sorted((root / "source").glob(MODULE_FOLDERS)):
        notebooks = tuple(sorted(folder.glob("*.ipynb")))
        if notebooks:
            modules.append(Module(folder.name, notebooks))
    return modules


def select(modules: list[Module], wanted: list[str]) -> list[Module]:
    """The modules named by folder (`02-deployment`) or number (`02`), in curriculum order;
    all of them when none is named."""
    for name in wanted:
        if not any(name in (m.name, m.name[:2]) for m in modules):
            raise RunError(f"unknown module {name!r}; known modules: {', '.join(m.name for m in modules)}")
    return [m for m in modules if not wanted or m.name in wanted or m.name[:2] in wanted]


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """The notebook at `path`, or InvalidNotebook saying what is wrong with the file."""
    try:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
    # nbformat reports a malformed file through any of these, depending on where it breaks
    except (OSError, ValueError, AttributeError, KeyError, TypeError, nbformat.ValidationError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InvalidNotebook(f"{path} is not a valid Jupyter notebook: {reason}") from error
    return notebook


def parse_parameters(pairs: list[str]) -> dict:
    """`KEY=VALUE` pairs; a VALUE that reads as JSON (3, true, [1, 2]) is that value, any other a string."""
    parameters = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key.isidentifier():
            raise RunError(f"--param {pair!r} is not KEY=VALUE with KEY a Python name")
        try:
            parameters[key] = json.loads(value)
        except json.JSONDecodeError:
            parameters[key] = value
    return parameters


def new_namespace_suffix() -> str:
    """A short, DNS-safe suffix that notebooks append to the namespaces they create."""
    return secrets.token_hex(3)


def notebook_environment() -> dict[str, str]:
    """What notebooks run with: our environment, the running lab's endpoints where it names none
    (so `!kubectl` in a cell finds the cluster too), and this environment's bin (kubectl) and the
    lab's tools (promtool, etcdctl) first on PATH."""
    environment = {**read_state(), **os.environ}
    tools = [str(Path(sys.executable).parent), environment.get("LAB_TOOLS", ""), environment.get("PATH", "")]
    environment["PATH"] = os.pathsep.join(filter(None, tools))
    return environment


def run_curriculum(root: Path, wanted: list[str], *, output: Path | None = None,
                   parameters: dict | None = None, before: Callable[[], None] | None = None,
                   cell_timeout: int = CELL_TIMEOUT,
                   notebook_timeout: int = NOTEBOOK_TIMEOUT) -> tuple[Report, Path]:
    """Run the selected modules' notebooks; returns the report and the path of its HTML page.
    `before` runs once the modules are known to exist (the command starts the lab there)."""
    root = root.resolve()
    available = curriculum(root)
    if not available:
        raise RunError(f"no notebooks under {root}: expected notebooks/00-welcome.ipynb or source/NN-name/*.ipynb")
    modules = select(available, wanted)  # before the lab starts, so a typo fails at once
    if before:
        before()
    report = Report(started=datetime.now(UTC),
                    parameters={"namespace_suffix": new_namespace_suffix(), **(parameters or {})})
    output = (output or lab_home() / "runs" / report.started.strftime("%Y%m%dT%H%M%SZ")).resolve()
    output.mkdir(parents=True, exist_ok=True)
    environment = notebook_environment()
    queue = [(module.name, notebook) for module in modules for notebook in module.notebooks]
    for number, (module, notebook) in enumerate(queue, 1):
        counter = f"[{number}/{len(queue)}] {notebook.relative_to(root)}"
        print(f"{counter}: running", flush=True)
        result = execute(notebook, root, module, output, report.parameters, environment,
                         cell_timeout=cell_timeout, notebook_timeout=notebook_timeout)
        report.notebooks.append(result)
        print(f"{counter}: {result.status} in {result.duration_s:.1f}s{_where(result)}", flush=True)
    report.finished = datetime.now(UTC)
    page = report.write(output)
    print(report.summary(), flush=True)
    return report, page


def _where(result: NotebookResult) -> str:
    if result.status == "passed":
        return ""
    cell = "" if result.cell_index is None else f" at cell {result.cell_index}"
    return f"{cell}: {result.error_name}: {result.error_message}"


def execute(notebook: Path, root: Path, module: str, output: Path, parameters: dict,
            environment: dict[str, str], *, cell_timeout: int, notebook_timeout: int) -> NotebookResult:
    """Run one notebook with papermill; its executed copy, and papermill's log beside it, go to
    the notebook's relative path under `output`."""
    relative = notebook.relative_to(root)
    result = NotebookResult(path=str(relative), module=module, status="passed", duration_s=0.0)
    started = time.monotonic()
    try:
        read_notebook(notebook)
    except InvalidNotebook as error:
        result.status, result.error_name, result.error_message = "failed", "InvalidNotebook", str(error)
        result.duration_s = round(time.monotonic() - started, 2)
        return result
    executed, log = output / relative, output / relative.with_suffix(".log")
    executed.parent.mkdir(parents=True, exist_ok=True)
    executed.unlink(missing_ok=True)  # a copy left by an earlier run into the same folder would mislead
    command = [sys.executable, "-m", "papermill", str(notebook), str(executed),
               "--kernel", "python3", "--cwd", str(notebook.parent),
               "--parameters_yaml", json.dumps(parameters),
               "--execution-timeout", str(cell_timeout), "--start-timeout", str(KERNEL_START_TIMEOUT),
               "--log-level", "WARNING", "--no-progress-bar"]
    progress = CellProgress(executed)
    exit_code = _run_bounded(command, environment, notebook_timeout, log, progress.update)
    progress.finish()
    result.duration_s = round(time.monotonic() - started, 2)
    result.log = str(log.relative_to(output))
    if executed.exists():
        result.executed = str(relative)
    if exit_code != 0:
        papermill_log = log.read_text(errors="replace")
        _diagnose(result, executed, exit_code, papermill_log, cell_timeout, notebook_timeout)
    return result


class CellProgress:
    """How far a running notebook has got, read from the copy papermill saves after every cell:
    shown live on a terminal, and as a line every PROGRESS_EVERY seconds in a log."""

    def __init__(self, executed: Path):
        self.executed, self.out = executed, sys.stdout
        self.live = self.out.isatty()
        self.started = self.last_line = time.monotonic()
        self.shown = ""

    def update(self) -> None:
        try:
            cells = json.loads(self.executed.read_text())["cells"]
        except (OSError, ValueError, KeyError):  # not written yet, or being written
            return
        cells = [c for c in cells if not PAPERMILL_CELLS.intersection(c["metadata"].get("tags", []))]
        statuses = [c["metadata"].get("papermill", {}).get("status") for c in cells]
        done = sum(status in ("completed", "failed") for status in statuses)
        text = f"{done}/{len(cells)} cells done"
        now = time.monotonic()
        if self.live and text != self.shown:
            self.out.write(f"\r      {text}")
        elif not self.live and now - self.last_line >= PROGRESS_EVERY:
            self.out.write(f"      {text} after {now - self.started:.0f}s\n")
            self.last_line = now
        self.out.flush()
        self.shown = text

    def finish(self) -> None:
        if self.live and self.shown:
            self.out.write("\r\033[K")  # clear the progress line for the notebook's result


def _run_bounded(command: list[str], environment: dict[str, str], timeout: float, log: Path,
                 tick: Callable[[], None]) -> int | None:
    """Run `command` with its stderr going to `log`, calling `tick()` while it runs; returns its
    exit code, or None when it ran past `timeout` seconds and was stopped."""
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, env=environment, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    deadline = time.monotonic() + timeout
    exit_code = None
    try:
        while (exit_code := process.poll()) is None and time.monotonic() < deadline:
            tick()
            time.sleep(TICK)
    finally:
        # Past the deadline, or on Ctrl-C, papermill and what it started go; the kernel, in a
        # session of its own, watches its parent and exits with it.
        if exit_code is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return exit_code


def _stored_cells(executed: Path) -> list[nbformat.NotebookNode]:
    """The executed notebook's cells without those papermill added, so indices match the stored notebook."""
    try:
        cells = read_notebook(executed).cells
    except InvalidNotebook:  # papermill died before writing it, or while writing it
        return []
    return [c for c in cells if not PAPERMILL_CELLS.intersection(c.metadata.get("tags", []))]


def _diagnose(result: NotebookResult, executed: Path, exit_code: int | None, log: str,
              cell_timeout: int, notebook_timeout: int) -> None:
    """Fill in `result` for a papermill run that did not succeed: the cell, the error, whose fault."""
    cells = _stored_cells(executed)
    raised = [i for i, c in enumerate(cells) if any(o.output_type == "error" for o in c.get("outputs", []))]
    running = [i for i, c in enumerate(cells) if c.metadata.get("papermill", {}).get("status") == "running"]
    index = (raised or running or [None])[0]
    if index is not None:
        result.cell_index = index
        lines = cells[index].source.splitlines()
        cut = ["…"] if len(lines) > SOURCE_LINES else []
        result.cell_source = "\n".join(lines[:SOURCE_LINES] + cut)
    exceptions = EXCEPTION_LINE.findall(log)
    if exit_code is None:
        result.status, result.error_name = "error", "NotebookTimeout"
        result.error_message = f"the notebook ran longer than its {notebook_timeout}s bound and was stopped"
    elif exceptions and exceptions[-1][0] == "CellTimeoutError":
        result.status, result.error_name = "failed", "CellTimeoutError"
        result.error_message = f"the cell ran longer than its {cell_timeout}s limit"
    elif raised:
        error = next(o for o in cells[index].outputs if o.output_type == "error")
        result.status, result.error_name, result.error_message = "failed", error.ename, error.evalue
    else:  # papermill or the kernel broke down rather than a cell raising
        result.status = "error"
        last = exceptions[-1] if exceptions else ("PapermillFailed", f"papermill exited with code {exit_code}")
        result.error_name, result.error_message = last
