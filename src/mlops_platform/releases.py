"""The release catalogue: which image tag behaves how.

Every platform program reads its own image reference from env `IMAGE`
(`registry.local/mlops/api-server:1.4.2`) and looks its tag up here. The api-server's releases
are 1.x and the model-server's 2.x, but both programs accept every tag in the table, so one
table is the whole truth about what a rollout to any tag will do.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Release:
    tag: str
    summary: str
    # Share of business requests (/predict) that fail with a 500, and latency added to each.
    error_ratio: float = 0.0
    added_latency_seconds: float = 0.0
    # Memory kept forever, per second and per business request, up to LEAK_CAP_BYTES.
    leak_bytes_per_second: int = 0
    leak_bytes_per_request: int = 0
    # Set for a release that cannot start: the error it logs before exiting non-zero.
    startup_error: str | None = None
    # What the process logs for each injected failure, as a real bug would.
    fault_message: str = "unhandled exception in request handler"


# A leaking release stops growing here, so a forgotten one cannot exhaust the machine.
LEAK_CAP_BYTES = 300 * MiB

_FAULTY = dict(
    error_ratio=0.30,
    added_latency_seconds=0.30,
    fault_message="unhandled exception in request handler: KeyError: 'feature_scaling'",
)
_LEAKING = dict(leak_bytes_per_second=2 * MiB, leak_bytes_per_request=64 * 1024)
_FAILS_TO_START = dict(
    startup_error=(
        "startup failed: schema migration 0042_add_feature_store requires setting "
        "FEATURE_STORE_URL, which is not set; refusing to start"
    )
)

CATALOGUE: dict[str, Release] = {
    release.tag: release
    for release in (
        Release("1.4.2", "api-server current release"),
        Release("2.1.0", "model-server current release"),
        Release("1.5.0", "api-server newer release"),
        Release("2.2.0", "model-server newer release"),
        Release("1.5.1", "api-server faulty release: 30% of predictions fail, +300 ms", **_FAULTY),
        Release("2.2.1", "model-server faulty release: 30% of predictions fail, +300 ms", **_FAULTY),
        Release("1.5.2", "api-server release that leaks memory", **_LEAKING),
        Release("2.2.2", "model-server release that leaks memory", **_LEAKING),
        Release("1.6.0", "api-server release that fails to start", **_FAILS_TO_START),
        Release("2.3.0", "model-server release that fails to start", **_FAILS_TO_START),
    )
}


class UnknownRelease(ValueError):
    """The image's tag is not in the catalogue."""


def tag_of(image: str) -> str:
    """The tag of an image reference; `latest` when it has none, as a container runtime reads it."""
    name = image.split("@", 1)[0]  # a pinned digest does not change which tag was asked for
    _, colon, tag = name.rpartition(":")
    # A colon before the last slash belongs to a registry port (`registry.local:5000/mlops/x`).
    if not colon or "/" in tag:
        return "latest"
    return tag


def release_for(image: str) -> Release:
    tag = tag_of(image)
    try:
        return CATALOGUE[tag]
    except KeyError:
        known = ", ".join(sorted(CATALOGUE))
        raise UnknownRelease(f"image {image!r} has unknown tag {tag!r}; known tags: {known}") from None
