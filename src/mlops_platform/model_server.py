"""The model-server: iris species predictions from a scikit-learn model trained at start.

The model is trained on the iris data set that ships inside scikit-learn, so starting needs no
download. Configured from the environment only:

    LISTEN_ADDRESS  address to listen on (default 127.0.0.1)
    PORT            port to listen on (default 8080)
    IMAGE           own image; its tag picks the release and is the model version
                    (default registry.local/mlops/model-server:2.1.0)
    LOG_LEVEL       debug, info, warning or error (default info)

Run: python -m mlops_platform.model_server
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram

from mlops_platform.iris import parse_features
from mlops_platform.logs import JsonLog
from mlops_platform.service import HttpError, Request, Response, Service, load_release

DEFAULT_IMAGE = "registry.local/mlops/model-server:2.1.0"
DEFAULT_PORT = 8080
# One prediction takes well under a millisecond; the upper buckets catch a starved CPU.
INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class IrisModel:
    """A logistic regression over the four iris measurements."""

    name = "iris-logistic-regression"

    def __init__(self):
        # Imported here rather than at the top: scikit-learn takes seconds to import, and a
        # release that cannot start should say so at once.
        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression

        iris = load_iris()
        self.classes = [str(name) for name in iris.target_names]
        self._model = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
        self.training_accuracy = round(float(self._model.score(iris.data, iris.target)), 4)

    def predict(self, features: list[float]) -> tuple[str, dict[str, float]]:
        probabilities = self._model.predict_proba([features])[0]
        by_class = {name: round(float(p), 4) for name, p in zip(self.classes, probabilities)}
        return max(by_class, key=by_class.get), by_class


class ModelServer:
    def __init__(self, model: IrisModel, service: Service):
        self.model = model
        self.service = service
        self.inference_duration = Histogram(
            "model_inference_duration_seconds",
            "Time the model takes for one prediction.",
            buckets=INFERENCE_BUCKETS,
            registry=service.registry,
        )
        self.predictions = Counter(
            "model_predictions", "Predictions made, by predicted class.", ["class"], registry=service.registry
        )
        service.route("GET", "/health", self.health, quiet=True)
        service.route("POST", "/predict", self.predict, business=True)

    def health(self, _request: Request) -> Response:
        return Response.json(
            200,
            {
                "status": "ok",
                "version": self.service.release.tag,
                "model": self.model.name,
                "training_accuracy": self.model.training_accuracy,
            },
        )

    def predict(self, request: Request) -> Response:
        document = request.json()
        try:
            features = parse_features(document.get("features") if isinstance(document, dict) else None)
        except ValueError as error:
            raise HttpError(400, str(error)) from None
        started = time.perf_counter()
        label, probabilities = self.model.predict(features)
        self.inference_duration.observe(time.perf_counter() - started)
        self.predictions.labels(label).inc()
        return Response.json(
            200, {"class": label, "probabilities": probabilities, "model_version": self.service.release.tag}
        )


def main() -> int:
    log = JsonLog.from_env("model-server")
    release = load_release(log, DEFAULT_IMAGE)
    started = time.perf_counter()
    model = IrisModel()
    log.info(
        "model trained",
        model=model.name,
        training_accuracy=model.training_accuracy,
        seconds=round(time.perf_counter() - started, 2),
    )
    service = Service(release, log)
    ModelServer(model, service)
    return service.run(DEFAULT_PORT)


if __name__ == "__main__":
    raise SystemExit(main())
