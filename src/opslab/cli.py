"""The `opslab` command."""

from __future__ import annotations

import argparse
import sys

from opslab.config import ConfigError


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


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="opslab", description="An executable MLOps operations curriculum.")
    commands = top.add_subparsers(dest="command", required=True)
    lab = commands.add_parser("lab", help="the embedded lab: a real Kubernetes control plane on this machine")
    lab.add_argument("action", choices=["build", "up", "status", "down", "reset", "env"],
                     help="build its binaries; start it; report its health; stop it; "
                          "restore its baseline; print shell exports")
    lab.set_defaults(run=_lab_command)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from opslab.cluster import ClusterError
    from opslab.lab.build import BuildError
    from opslab.lab.lab import LabError
    from opslab.lab.network import NetworkError

    try:
        return args.run(args)
    except (LabError, BuildError, NetworkError, ClusterError, ConfigError, TimeoutError) as error:
        print(f"opslab: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
