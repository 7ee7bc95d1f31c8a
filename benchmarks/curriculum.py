"""How long each module takes headless, warm, on the running lab: `opslab run` per module, each
round in namespaces of its own.

    .venv/bin/python benchmarks/curriculum.py [--rounds 3] [MODULE ...]

Prints, per module, the median, min and max of the notebook's own duration (as the run's report
has it) over the rounds, against the 120 s goal; and the whole curriculum's total per round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from opslab.config import CHECKOUT

GOAL_SECONDS = 120


def run_once(modules: list[str], suffix: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="opslab-bench-") as output:
        subprocess.run([sys.executable, "-m", "opslab.cli", "run", *modules, "--no-lab", "--output", output,
                        "--param", f"namespace_suffix={suffix}"], cwd=CHECKOUT, check=False, timeout=3600)
        report = json.loads((Path(output) / "report.json").read_text())
    failed = [r["path"] for r in report["notebooks"] if r["status"] != "passed"]
    if failed:
        raise SystemExit(f"not timed: {', '.join(failed)} did not pass")
    return {r["module"]: r["duration_s"] for r in report["notebooks"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="default: the whole curriculum")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = [run_once(args.modules, f"bench{number}") for number in range(args.rounds)]
    print(f"{'module':<20} {'median':>8} {'min':>8} {'max':>8}   (s, {args.rounds} rounds, goal <= {GOAL_SECONDS} s)")
    for module in rounds[0]:
        seconds = [r[module] for r in rounds]
        print(f"{module:<20} {statistics.median(seconds):8.1f} {min(seconds):8.1f} {max(seconds):8.1f}")
    totals = [sum(r.values()) for r in rounds]
    print(f"{'all, one after another':<20} {statistics.median(totals):8.1f} {min(totals):8.1f} {max(totals):8.1f}")


if __name__ == "__main__":
    main()
