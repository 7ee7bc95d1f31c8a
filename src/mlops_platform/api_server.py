"""The api-server: the platform's public HTTP API.

Its shape is hexagonal: HTTP comes in (the routes below), and two ports go out, to the
model-server (`model_client`) and to PostgreSQL (`database`). Configured from the environment only:

    LISTEN_ADDRESS    address to listen on (default 127.0.0.1)
    PORT              port to listen on (default 8000)
    IMAGE             own image; its tag picks the release (default …/api-server:1.4.2)
    MODEL_SERVER_URL  base URL of the model-server (default http://model-server:8080)
    DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD
                      PostgreSQL (defaults postgres, 5432, mlops_prod, mlops, empty)
    API_KEY           when set, /predict requires header X-API-Key with this value
    FEATURE_<NAME>    feature flags, true or false; FEATURE_BATCH_PREDICT adds POST /predict/batch
    LOG_LEVEL         debug, info, warning or error (default info)

Run: python -m mlops_platform.api_server
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from mlops_platform.database import Database, DatabaseError, DatabaseSettings, PredictionRow
from mlops_platform.iris import parse_features
from mlops_platform.logs import JsonLog
from mlops_platform.model_client import ModelClient, ModelServerError, Prediction
from mlops_platform.service import ConfigError, HttpError, Request, Response, Service, env_int, load_release

DEFAULT_IMAGE = "registry.local/mlops/api-server:1.4.2"
DEFAULT_PORT = 8000
MAX_BATCH_SIZE = 32
ACTIVE_USER_WINDOW_SECONDS = 300


@dataclass(frozen=True)
class Settings:
    model_server_url: str
    database: DatabaseSettings
    api_key: str | None = field(repr=False)
    features: dict[str, bool]

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            model_server_url=env.get("MODEL_SERVER_URL", "http://model-server:8080"),
            database=DatabaseSettings(
                host=env.get("DB_HOST", "postgres"),
                port=env_int("DB_PORT", 5432),
                name=env.get("DB_NAME", "mlops_prod"),
                user=env.get("DB_USER", "mlops"),
                password=env.get("DB_PASSWORD", ""),
            ),
            api_key=env.get("API_KEY") or None,
            features=feature_flags(env),
        )


def feature_flags(env: Mapping[str, str]) -> dict[str, bool]:
    """`FEATURE_BATCH_PREDICT=true` becomes `{"batch_predict": True}`; anything but true or false is refused."""
    flags = {}
    for name, value in env.items():
        if not name.startswith("FEATURE_"):
            continue
        if value.lower() not in ("true", "false"):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        flags[name.removeprefix("FEATURE_").lower()] = value.lower() == "true"
    return flags


class ActiveUsers:
    """Distinct users seen in the last `window` seconds, by this process."""

    def __init__(self, window: float):
        self.window = window
        self._last_seen: dict[int, float] = {}
        self._lock = threading.Lock()

    def seen(self, user_id: int) -> None:
        with self._lock:
            self._last_seen[user_id] = time.monotonic()

    def count(self) -> int:
        horizon = time.monotonic() - self.window
        with self._lock:
            self._last_seen = {user: at for user, at in self._last_seen.items() if at >= horizon}
            return len(self._last_seen)


@dataclass(frozen=True)
class Instance:
    features: list[float]
    user_id: int | None

    @classmethod
    def parse(cls, document: Any) -> Instance:
        if not isinstance(document, dict):
            raise HttpError(400, 'expected a JSON object like {"features": [5.1, 3.5, 1.4, 0.2]}')
        try:
            features = parse_features(document.get("features"))
        except ValueError as error:
            raise HttpError(400, str(error)) from None
        user_id = document.get("user_id")
        if user_id is not None and (isinstance(user_id, bool) or not isinstance(user_id, int)):
            raise HttpError(400, f"user_id must be an integer, got {user_id!r}")
        return cls(features, user_id)


@dataclass(frozen=True)
class Outcome:
    instance: Instance
    prediction: Prediction
    latency_ms: float

    def answer(self) -> dict[str, Any]:
        return {
            "prediction": self.prediction.label,
            "probabilities": self.prediction.probabilities,
            "model_version": self.prediction.model_version,
            "latency_ms": self.latency_ms,
        }

    def row(self) -> PredictionRow:
        return PredictionRow(
            user_id=self.instance.user_id,
            model_version=self.prediction.model_version,
            input={"features": self.instance.features},
            output=self.prediction.label,
            latency_ms=self.latency_ms,
        )


class ApiServer:
    def __init__(self, settings: Settings, service: Service):
        self.settings = settings
        self.service = service
        registry = service.registry
        self.database = Database(
            settings.database,
            errors=Counter("db_errors", "Failed database operations.", registry=registry),
        )
        self.model = ModelClient(settings.model_server_url)
        self.predictions = Counter(
            "predictions", "Predictions served and recorded.", ["model_version"], registry=registry
        )
        self.auth_failures = Counter(
            "auth_failures", "Prediction requests refused for a missing or wrong X-API-Key.", registry=registry
        )
        self.active_users = ActiveUsers(ACTIVE_USER_WINDOW_SECONDS)
        Gauge(
            "active_users", "Distinct user ids that asked for a prediction in the last 5 minutes.", registry=registry
        ).set_function(self.active_users.count)

        service.route("GET", "/health", self.health, quiet=True)
        service.route("POST", "/predict", self.predict, business=True)
        if settings.features.get("batch_predict"):
            service.route("POST", "/predict/batch", self.predict_batch, business=True)

    def health(self, _request: Request) -> Response:
        try:
            self.database.check()
            database = "ok"
        except DatabaseError as error:
            database = f"error: {error}"
        healthy = database == "ok"
        return Response.json(
            200 if healthy else 503,
            {
                "status": "ok" if healthy else "error",
                "version": self.service.release.tag,
                "database": database,
                "features": self.settings.features,
            },
        )

    def predict(self, request: Request) -> Response:
        self._authorize(request)
        instance = Instance.parse(request.json())
        outcome = self._predict(instance, request.request_id)
        self._record([outcome])
        return Response.json(200, {**outcome.answer(), "request_id": request.request_id})

    def predict_batch(self, request: Request) -> Response:
        self._authorize(request)
        document = request.json()
        instances = document.get("instances") if isinstance(document, dict) else None
        if not isinstance(instances, list) or not 1 <= len(instances) <= MAX_BATCH_SIZE:
            raise HttpError(400, f'expected {{"instances": [...]}} with 1 to {MAX_BATCH_SIZE} instances')
        parsed = [Instance.parse(instance) for instance in instances]
        outcomes = [self._predict(instance, request.request_id) for instance in parsed]
        self._record(outcomes)
        return Response.json(
            200, {"predictions": [outcome.answer() for outcome in outcomes], "request_id": request.request_id}
        )

    def _authorize(self, request: Request) -> None:
        if self.settings.api_key is None:
            return
        offered = request.headers.get("X-API-Key", "")
        if not hmac.compare_digest(offered.encode(), self.settings.api_key.encode()):
            self.auth_failures.inc()
            raise HttpError(401, "missing or wrong X-API-Key")

    def _predict(self, instance: Instance, request_id: str) -> Outcome:
        started = time.perf_counter()
        try:
            prediction = self.model.predict(instance.features, request_id)
        except ModelServerError as error:
            raise HttpError(502, str(error)) from None
        return Outcome(instance, prediction, round((time.perf_counter() - started) * 1000, 1))

    def _record(self, outcomes: list[Outcome]) -> None:
        try:
            self.database.record_predictions([outcome.row() for outcome in outcomes])
        except DatabaseError as error:
            raise HttpError(503, f"database unavailable: {error}") from None
        for outcome in outcomes:
            self.predictions.labels(outcome.prediction.model_version).inc()
            if outcome.instance.user_id is not None:
                self.active_users.seen(outcome.instance.user_id)


def main() -> int:
    log = JsonLog.from_env("api-server")
    release = load_release(log, DEFAULT_IMAGE)
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        log.error(f"invalid configuration: {error}")
        return 2
    service = Service(release, log)
    ApiServer(settings, service)
    log.info(
        "configured",
        model_server_url=settings.model_server_url,
        database=f"{settings.database.user}@{settings.database.host}:{settings.database.port}/{settings.database.name}",
        api_key_required=settings.api_key is not None,
        features=settings.features,
    )
    return service.run(DEFAULT_PORT)


if __name__ == "__main__":
    raise SystemExit(main())
