"""The release catalogue: image references to tags, tags to behaviour."""

import dataclasses

import pytest

from mlops_platform.releases import CATALOGUE, Release, UnknownRelease, release_for, tag_of


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        ("registry.local/mlops/api-server:1.4.2", "1.4.2"),
        ("registry.local:5000/mlops/model-server:2.1.0", "2.1.0"),
        ("registry.local:5000/mlops/model-server", "latest"),
        ("registry.local/mlops/api-server:1.5.0@sha256:" + "ab" * 32, "1.5.0"),
        ("api-server", "latest"),
    ],
)
def test_tag_is_read_as_a_container_runtime_reads_it(image, tag):
    assert tag_of(image) == tag


def test_unknown_tag_is_refused_naming_every_known_tag():
    with pytest.raises(UnknownRelease) as refused:
        release_for("registry.local/mlops/api-server:9.9.9")
    message = str(refused.value)
    assert "'9.9.9'" in message
    assert all(tag in message for tag in CATALOGUE)


def _behaviour(release: Release) -> dict:
    return {k: v for k, v in dataclasses.asdict(release).items() if k not in ("tag", "summary")}


@pytest.mark.parametrize(
    ("api_tag", "model_tag", "kind"),
    [
        ("1.4.2", "2.1.0", "healthy"),
        ("1.5.0", "2.2.0", "healthy"),
        ("1.5.1", "2.2.1", "faulty"),
        ("1.5.2", "2.2.2", "leaking"),
        ("1.6.0", "2.3.0", "fails to start"),
    ],
)
def test_each_api_server_release_has_a_model_server_twin(api_tag, model_tag, kind):
    api, model = release_for(f"r/api-server:{api_tag}"), release_for(f"r/model-server:{model_tag}")
    assert _behaviour(api) == _behaviour(model)
    observed = {
        "healthy": api == Release(api.tag, api.summary),
        "faulty": api.error_ratio > 0 and api.added_latency_seconds > 0,
        "leaking": api.leak_bytes_per_second > 0,
        "fails to start": api.startup_error is not None,
    }
    assert [name for name, holds in observed.items() if holds] == [kind]
