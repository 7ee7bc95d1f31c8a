"""The model-server: a scikit-learn model trained at start, served over HTTP with metrics."""

import pytest

from mlops_platform.iris import SPECIES_MEASUREMENTS


def test_health_names_the_model_and_its_release(model_server):
    reply = model_server.get("/health")
    assert reply.status == 200
    assert reply.body["version"] == "2.1.0"
    assert reply.body["model"] == "iris-logistic-regression"
    assert reply.body["training_accuracy"] > 0.9


@pytest.mark.parametrize("species", sorted(SPECIES_MEASUREMENTS))
def test_a_typical_flower_is_classified_as_its_species_and_counted(model_server, species):
    typical = [mean for mean, _ in SPECIES_MEASUREMENTS[species]]
    predicted_before = model_server.metric("model_predictions_total", **{"class": species})
    timed_before = model_server.metric("model_inference_duration_seconds_count")

    reply = model_server.post("/predict", {"features": typical})

    assert reply.status == 200
    assert reply.body["class"] == species
    assert reply.body["model_version"] == "2.1.0"
    assert sum(reply.body["probabilities"].values()) == pytest.approx(1, abs=0.001)
    assert model_server.metric("model_predictions_total", **{"class": species}) == predicted_before + 1
    assert model_server.metric("model_inference_duration_seconds_count") == timed_before + 1
    assert model_server.metric("process_resident_memory_bytes") > 0


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/predict", {"features": [1, 2]}, 400),
        ("POST", "/predict", {"features": [1, 2, 3, float("inf")]}, 400),
        ("GET", "/predict", None, 405),
        ("GET", "/model/weights", None, 404),
    ],
)
def test_bad_requests_get_a_json_error(model_server, method, path, body, status):
    reply = model_server.post(path, body) if method == "POST" else model_server.get(path)
    assert reply.status == status
    assert reply.body["error"] and reply.body["request_id"]
