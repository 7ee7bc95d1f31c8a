"""`opslab run`: notebooks executed headless with papermill, and the report of what happened."""

from __future__ import annotations

import json

import nbformat
import pytest

from opslab import cli, run
from opslab.lab import lab as lab_module
from tests.harness.conftest import FIXTURES, SAMPLE, write_notebook


def opslab_run(root, output, *arguments: str) -> int:
    return cli.main(["run", "--no-lab", "--root", str(root), "--output", str(output), *arguments])


def test_a_passing_curriculum_writes_the_report_and_exits_zero(course, tmp_path, capsys):
    write_notebook(course / "notebooks" / "00-welcome.ipynb", 'namespace_suffix = ""',
                   'print(open("beside.txt").read())')  # runs in its own folder
    (course / "notebooks" / "beside.txt").write_text("welcome")
    output = tmp_path / "out"

    assert opslab_run(course, output, "--param", "namespace_suffix=ci-7") == 0

    report = json.loads((output / "report.json").read_text())
    sample = f"source/{SAMPLE}/sample.ipynb"
    assert [(n["path"], n["status"]) for n in report["notebooks"]] == [
        ("notebooks/00-welcome.ipynb", "passed"), (sample, "passed")]
    totals = report["totals"]
    assert (totals["notebooks"], totals["passed"], totals["failed"], totals["error"]) == (2, 2, 0, 0)
    assert report["started"] < report["finished"]
    assert report["parameters"] == {"namespace_suffix": "ci-7"}
    executed = nbformat.read(output / sample, as_version=4)
    outputs = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "namespace sample-ci-7" in outputs  # the parameter reached the notebook
    page = (output / "report.html").read_text()
    assert "data:image/png;base64," in page and sample in page
    shown = capsys.readouterr().out
    assert "[1/2] notebooks/00-welcome.ipynb: running" in shown
    assert f"[2/2] {sample}: passed in" in shown
    assert f"report: {output / 'report.html'}" in shown


def test_broken_notebooks_fail_the_run_and_the_report_says_where(tmp_path, capsys):
    root = tmp_path / "curriculum"
    write_notebook(root / "source" / "01-broken" / "broken.ipynb",
                   'namespace_suffix = ""', "replicas = {'web': 3}", "replicas['api']", "print('never runs')")
    (root / "source" / "02-invalid").mkdir(parents=True)
    (root / "source" / "02-invalid" / "invalid.ipynb").write_text('{"cells": [')
    write_notebook(root / "source" / "03-stuck" / "stuck.ipynb", 'namespace_suffix = ""',
                   "import time\ntime.sleep(60)")
    write_notebook(root / "source" / "04-fine" / "fine.ipynb", 'namespace_suffix = ""', "print('fine')")
    output = tmp_path / "out"

    assert opslab_run(root, output, "--cell-timeout", "3") == 1

    report = json.loads((output / "report.json").read_text())
    broken, invalid, stuck, fine = report["notebooks"]
    assert broken["status"] == "failed"
    assert broken["cell_index"] == 2  # as the notebook is stored, not counting papermill's added cells
    assert broken["cell_source"] == "replicas['api']"
    assert (broken["error_name"], broken["error_message"]) == ("KeyError", "'api'")
    assert invalid["status"] == "failed" and invalid["error_name"] == "InvalidNotebook"
    assert "invalid.ipynb is not a valid Jupyter notebook" in invalid["error_message"]
    assert (stuck["status"], stuck["cell_index"], stuck["error_name"]) == ("failed", 1, "CellTimeoutError")
    assert fine["status"] == "passed"  # a broken notebook does not stop the ones after it
    assert report["totals"]["failed"] == 3
    page = (output / "report.html").read_text()
    assert "KeyError" in page and "replicas[&#x27;api&#x27;]" in page
    assert "01-broken/broken.ipynb: failed in" in capsys.readouterr().out


def test_a_notebook_past_its_overall_bound_is_stopped_and_reported(tmp_path):
    notebook = write_notebook(tmp_path / "source" / "01-slow" / "slow.ipynb", 'namespace_suffix = ""',
                              "import time\ntime.sleep(120)")
    result = run.execute(notebook, tmp_path, "01-slow", tmp_path / "out", {}, run.notebook_environment(),
                         cell_timeout=120, notebook_timeout=6)
    assert (result.status, result.error_name) == ("error", "NotebookTimeout")
    assert result.duration_s < 30


def test_an_unknown_module_is_refused_with_the_known_ones(tmp_path, capsys):
    assert opslab_run(FIXTURES, tmp_path, "02-nope") == 1
    assert f"unknown module '02-nope'; known modules: {SAMPLE}" in capsys.readouterr().err


def test_modules_are_chosen_by_folder_or_number(tmp_path):
    for name in ("01-one", "02-two", "03-three"):
        write_notebook(tmp_path / "source" / name / "n.ipynb", "x = 1")
    chosen = run.select(run.curriculum(tmp_path), ["03", "01-one"])
    assert [m.name for m in chosen] == ["01-one", "03-three"]  # in curriculum order


def test_parameters_read_as_json_when_they_can():
    assert run.parse_parameters(["replicas=3", "name=web", "canary=true", "tags=[1, 2]"]) == {
        "replicas": 3, "name": "web", "canary": True, "tags": [1, 2]}
    with pytest.raises(run.RunError, match="not KEY=VALUE"):
        run.parse_parameters(["replicas"])


class FakeLab:
    healthy = True
    started = 0

    def health(self):
        return [("kube-apiserver", 1, FakeLab.healthy, "")]

    def up(self):
        FakeLab.started += 1


@pytest.mark.parametrize("kubeconfig, healthy, starts",
                         [("/some/kubeconfig", False, 0), ("", True, 0), ("", False, 1)])
def test_the_lab_starts_only_when_no_cluster_is_given_or_running(monkeypatch, kubeconfig, healthy, starts):
    monkeypatch.setattr(lab_module, "Lab", FakeLab)
    monkeypatch.setattr(FakeLab, "healthy", healthy)
    monkeypatch.setattr(FakeLab, "started", 0)
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    cli._ensure_cluster()
    assert FakeLab.started == starts
