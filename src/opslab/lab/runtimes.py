"""What a container image runs in the lab: the catalogue behind every process-backed pod.

An image the catalogue knows becomes a real process; any other image is simulated, the way
kwok simulates pods: Running and Ready with nothing behind it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Program:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def _module(name: str) -> list[str]:
    return [sys.executable, "-m", name]


def repository(image: str) -> str:
    """`registry.local/mlops/api-server:1.4.2` -> `registry.local/mlops/api-server`."""
    name = image.split("@", 1)[0]
    head, _, tag = name.rpartition(":")
    return head if head and "/" not in tag else name


def program_for(image: str, volume: Path, scratch: Path) -> Program | None:
    """The process behind a container of `image`, or None for a simulated container.

    `volume` survives the pod (a StatefulSet pod's data, by pod identity); `scratch` does not.
    """
    repo = repository(image)
    if repo == "registry.local/mlops/api-server":
        return Program(_module("mlops_platform.api_server"))
    if repo == "registry.local/mlops/model-server":
        return Program(_module("mlops_platform.model_server"))
    if repo == "registry.local/mlops/traffic-generator":
        return Program(_module("mlops_platform.traffic"))
    if repo in ("registry.local/library/postgres", "postgres"):
        socket_dir = str(scratch / "postgres")
        # PGHOST lets `kubectl exec postgres-0 -- psql …` find the server's socket, as in the image.
        return Program(_module("mlops_platform.postgres"),
                       {"PGDATA": str(volume / "pgdata"), "SOCKET_DIR": socket_dir, "PGHOST": socket_dir})
    return None
