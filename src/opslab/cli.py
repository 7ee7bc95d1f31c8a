"""The `opslab` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from opslab.config import CHECKOUT
from opslab.errors import OpslabError


def _lab_command(args: argparse.Namespace) -> int:
    from opslab.lab import build
    from opslab.lab.lab import Lab

    if args.action == "build":
        build.build()
        return 0
    lab = Lab()
    if args.action == "up":
        lab.up()
    elif args.action == "status":
        return 0 if lab.print_status() else 1
    elif args.action == "down":
        lab.down()
    elif args.action == "reset":
        lab.reset()
    elif args.action == "env":
        sys.stdout.write(lab.env())
    return 0


def _ensure_cluster() -> None:
    """Start the embedded lab unless the environment names a cluster or the lab is already healthy."""
    import os

    from opslab.lab.lab import Lab

    if os.environ.get("KUBECONFIG"):
        return
    lab = Lab()
    if not all(ok for _, _, ok, _ in lab.health()):
        lab.up()


def _run_command(args: argparse.Namespace) -> int:
    from opslab import run

    report, page = run.run_curriculum(args.root or CHECKOUT, args.modules, output=args.output,
                                      parameters=run.parse_parameters(args.param),
                                      before=None if args.no_lab else _ensure_cluster,
                                      cell_timeout=args.cell_timeout or run.CELL_TIMEOUT,
                                      notebook_timeout=args.notebook_timeout or run.NOTEBOOK_TIMEOUT)
    print(f"report: {page}")
    return 0 if report.passed else 1


def _grade_command(args: argparse.Namespace) -> int:
    from opslab import grading

    scores = grading.autograde(args.notebooks, args.student, args.module, args.root or CHECKOUT)
    print(scores.to_string(index=False))
    auto = scores[~scores.needs_manual_grade]
    print(f"autograded: {auto.points.sum():g} of {auto.max_points.sum():g} points; "
          f"{int(scores.needs_manual_grade.sum())} answer(s) await manual grading")
    return 0


def _release_command(args: argparse.Namespace) -> int:
    from opslab import grading

    root = args.root or CHECKOUT
    modules = args.modules or grading.assignments(root)
    if not modules:
        raise grading.GradingError(f"no modules under {root / 'source'}")
    stale = False
    for module in modules:
        if args.check:
            differences = grading.release_differences(module, root)
            stale = stale or bool(differences)
            print(f"{module}: " + ("stale\n  " + "\n  ".join(differences) if differences else "up to date"))
        else:
            print(f"{module}: generated {grading.generate_release(module, root)}")
    return 1 if stale else 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="opslab", description="An executable MLOps operations curriculum.")
    commands = top.add_subparsers(dest="command", required=True)
    lab = commands.add_parser("lab", help="the embedded lab: a real Kubernetes control plane on this machine")
    lab.add_argument("action", choices=["build", "up", "status", "down", "reset", "env"],
                     help="build its binaries; start it; report its health; stop it; "
                          "restore its baseline; print shell exports")
    lab.set_defaults(run=_lab_command)

    run = commands.add_parser("run", help="run notebooks headless with papermill and write a report")
    run.add_argument("modules", nargs="*", metavar="MODULE",
                     help="a module by folder (02-deployment) or number (02); default: the whole curriculum")
    run.add_argument("--output", type=Path, help="folder for the executed notebooks and the report "
                                                 "(default: .opslab/runs/<UTC time>/)")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="a notebook parameter; VALUE is read as JSON when it can be (repeatable)")
    run.add_argument("--no-lab", action="store_true",
                     help="do not start the embedded lab: the environment names the cluster")
    run.add_argument("--cell-timeout", type=int, help="seconds a cell may run before it fails")
    run.add_argument("--notebook-timeout", type=int, help="seconds a notebook may run before it is stopped")
    run.add_argument("--root", type=Path, help="the curriculum's folder (default: this checkout)")
    run.set_defaults(run=_run_command)

    grade = commands.add_parser("grade", help="autograde one student's submission in a course of its own")
    grade.add_argument("module", help="the assignment, a folder of source/")
    grade.add_argument("notebooks", nargs="+", type=Path, metavar="NOTEBOOK", help="the submitted notebook(s)")
    grade.add_argument("--student", required=True, help="the student's id")
    grade.add_argument("--root", type=Path, help="the course's folder (default: this checkout)")
    grade.set_defaults(run=_grade_command)

    release = commands.add_parser("release", help="generate the student versions in release/ from source/")
    release.add_argument("modules", nargs="*", metavar="MODULE", help="default: every folder of source/")
    release.add_argument("--check", action="store_true",
                         help="change nothing; exit non-zero when a release is stale")
    release.add_argument("--root", type=Path, help="the course's folder (default: this checkout)")
    release.set_defaults(run=_release_command)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (OpslabError, TimeoutError) as error:
        print(f"opslab: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
