"""OpenAI-shaped error answers that say what to do: the same JSON the OpenAI API and vLLM send
({"error": {"message", "type", "param", "code"}}), so the `openai` library raises its usual exceptions."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .routes import Route


@dataclass(frozen=True)
class GatewayError:
    status: int
    message: str
    type: str
    code: str
    param: str | None = None
    retry_after: int | None = None

    def body(self) -> bytes:
        return json.dumps({"error": {"message": self.message, "type": self.type, "param": self.param,
                                     "code": self.code}}).encode()

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="gemma-gateway"'
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers


def missing_key() -> GatewayError:
    return GatewayError(401, "No API key: send it as 'Authorization: Bearer <key>' (the key of a Secret "
                             "labelled gemma.ai/gateway-key).", "invalid_request_error", "missing_api_key")


def wrong_key() -> GatewayError:
    return GatewayError(401, "Incorrect API key: it matches no key Secret of the gateway.",
                        "invalid_request_error", "invalid_api_key")


def model_not_allowed(model: str, allowed: list[str]) -> GatewayError:
    return GatewayError(403, f"This API key may not use model '{model}'; it may use: "
                             f"{', '.join(allowed) or 'no model'}.", "permission_error", "model_not_allowed",
                        "model")


def unknown_model(model: str, known: list[str]) -> GatewayError:
    return GatewayError(404, f"The model '{model}' does not exist. Models: {', '.join(known) or 'none'}.",
                        "invalid_request_error", "model_not_found", "model")


def no_model(path: str) -> GatewayError:
    return GatewayError(400, f"{path} needs a JSON body with a 'model' field naming the model to use.",
                        "invalid_request_error", "missing_model", "model")


def not_ready(route: Route, retry_after: int) -> GatewayError:
    why = f": {route.reason} {route.message}".rstrip() if route.reason else ""
    return GatewayError(503, f"The model '{route.model}' has no ready server (GemmaDeployment "
                             f"{route.namespace}/{route.deployment} is {route.phase}{why}).",
                        "server_error", "model_not_ready", "model", retry_after)


def upstream_failed(route: Route, detail: str) -> GatewayError:
    return GatewayError(502, f"Every server of '{route.model}' failed to answer ({detail}); they are taken out "
                             "of rotation until they are ready again.", "server_error", "upstream_failed")


def not_found(path: str) -> GatewayError:
    return GatewayError(404, f"No route {path}: the gateway serves the OpenAI routes under /v1 "
                             "(and vLLM's /tokenize, /detokenize), routed by 'model'.",
                        "invalid_request_error", "unknown_route")
