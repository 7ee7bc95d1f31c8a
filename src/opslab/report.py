"""The report of a headless run: what each notebook did, where it broke, and how long it took.

`report.json` is for machines (CI, the instructor dashboard); `report.html` is for people and
carries a duration chart drawn with matplotlib, embedded so the page stands alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Patch

STATUSES = ("passed", "failed", "error")
COLOURS = {"passed": "#2e7d32", "failed": "#c62828", "error": "#ef6c00"}


@dataclass
class NotebookResult:
    """One notebook's outcome.

    `failed` means the notebook is at fault: a cell raised or ran past its time limit, or the
    file is not a valid notebook. `error` means the run could not judge it: the kernel died or
    the notebook ran past its overall time bound.
    """

    path: str  # relative to the curriculum root
    module: str
    status: str
    duration_s: float
    executed: str | None = None  # the executed copy, relative to the report's folder
    log: str | None = None  # papermill's log, likewise
    cell_index: int | None = None  # the failing cell, counted from 0 as the notebook is stored
    cell_source: str | None = None  # its first lines
    error_name: str | None = None
    error_message: str | None = None


@dataclass
class Report:
    started: datetime
    finished: datetime | None = None
    parameters: dict = field(default_factory=dict)
    notebooks: list[NotebookResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(result.status == "passed" for result in self.notebooks)

    def totals(self) -> dict:
        counts = {status: sum(r.status == status for r in self.notebooks) for status in STATUSES}
        duration = sum(r.duration_s for r in self.notebooks)
        return {"notebooks": len(self.notebooks), **counts, "duration_s": round(duration, 2)}

    def as_dict(self) -> dict:
        return {
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat() if self.finished else None,
            "parameters": self.parameters,
            "totals": self.totals(),
            "notebooks": [asdict(result) for result in self.notebooks],
        }

    def write(self, folder: Path) -> Path:
        """Write report.json and report.html into `folder`; returns the HTML page's path."""
        (folder / "report.json").write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        page = folder / "report.html"
        page.write_text(render_html(self))
        return page

    def summary(self) -> str:
        totals = self.totals()
        counts = ", ".join(f"{totals[s]} {s}" for s in STATUSES if totals[s])
        return f"{counts or 'no notebooks'} in {totals['duration_s']:.1f}s"


def duration_chart(results: list[NotebookResult]) -> bytes:
    """A PNG: one horizontal bar per notebook, its length the duration, its colour the status."""
    figure = Figure(figsize=(8, 1 + 0.4 * max(len(results), 1)), layout="constrained")
    axes = figure.subplots()
    labels = [result.path for result in results]
    axes.barh(labels, [r.duration_s for r in results], color=[COLOURS[r.status] for r in results])
    axes.invert_yaxis()  # the first notebook on top, as in the table
    axes.set_xlabel("duration (s)")
    axes.legend(handles=[Patch(color=COLOURS[s], label=s) for s in STATUSES], loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _row(result: NotebookResult) -> str:
    name = html.escape(result.path)
    if result.executed:
        name = f'<a href="{html.escape(result.executed)}">{name}</a>'
    if result.log and result.status != "passed":
        name += f' (<a href="{html.escape(result.log)}">log</a>)'
    where = "" if result.cell_index is None else f"cell {result.cell_index}"
    source = f"<pre>{html.escape(result.cell_source)}</pre>" if result.cell_source else ""
    error = ""
    if result.error_name:
        error = f"<b>{html.escape(result.error_name)}</b>: {html.escape(result.error_message or '')}"
    return (f'<tr class="{result.status}"><td>{name}</td><td>{result.status}</td>'
            f'<td class="number">{result.duration_s:.1f}</td><td>{where}{source}</td><td>{error}</td></tr>')


def render_html(report: Report) -> str:
    chart = base64.b64encode(duration_chart(report.notebooks)).decode() if report.notebooks else ""
    image = f'<img alt="duration per notebook" src="data:image/png;base64,{chart}">' if chart else ""
    rows = "\n".join(_row(result) for result in report.notebooks)
    parameters = html.escape(json.dumps(report.parameters))
    finished = report.finished.isoformat() if report.finished else "still running"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>opslab run report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
td.number {{ text-align: right; }}
tr.passed td:nth-child(2) {{ color: {COLOURS["passed"]}; }}
tr.failed td:nth-child(2) {{ color: {COLOURS["failed"]}; font-weight: bold; }}
tr.error td:nth-child(2) {{ color: {COLOURS["error"]}; font-weight: bold; }}
pre {{ background: #f6f6f6; margin: 0.3em 0 0; padding: 0.3em; }}
</style></head>
<body>
<h1>opslab run: {"passed" if report.passed else "FAILED"}</h1>
<p>{html.escape(report.summary())}; started {report.started.isoformat()}, finished {finished}.
Parameters: <code>{parameters}</code></p>
<table>
<tr><th>notebook</th><th>status</th><th>seconds</th><th>failing cell</th><th>error</th></tr>
{rows}
</table>
{image}
</body></html>
"""
