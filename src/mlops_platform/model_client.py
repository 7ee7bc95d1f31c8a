"""The api-server's model port: predictions from the model-server over HTTP."""

from __future__ import annotations

from dataclasses import dataclass

from mlops_platform.http_client import Unreachable, request_json

TIMEOUT_SECONDS = 5.0


class ModelServerError(Exception):
    """The model-server gave no usable prediction."""


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: dict[str, float]
    model_version: str


class ModelClient:
    def __init__(self, base_url: str):
        self.predict_url = base_url.rstrip("/") + "/predict"

    def predict(self, features: list[float], request_id: str) -> Prediction:
        try:
            # The request id travels on, so one request can be followed through both programs' logs.
            reply = request_json(
                "POST",
                self.predict_url,
                body={"features": features},
                headers={"X-Request-ID": request_id},
                timeout=TIMEOUT_SECONDS,
            )
        except Unreachable as error:
            raise ModelServerError(f"model server unreachable: {error}") from error
        if reply.status != 200:
            detail = reply.body.get("error") if isinstance(reply.body, dict) else None
            raise ModelServerError(f"model server answered {reply.status}: {detail or 'no detail'}")
        try:
            return Prediction(reply.body["class"], reply.body["probabilities"], reply.body["model_version"])
        except (KeyError, TypeError):
            raise ModelServerError("model server answered 200 without class, probabilities and model_version") from None
