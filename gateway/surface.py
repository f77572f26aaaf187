"""The operations the gateway serves, and where each one lives on a backend of either `api=` style. Pure data.

Azure serves an operation in one of three places. Under a deployment (`/openai/deployments/{d}/{op}?api-version=`),
where the path names the model and the body's `model` is ignored; on the resource (`/openai/responses?api-version=`),
where the body's `model` names the deployment; and on the v1 surface (`/openai/v1/{op}`, no dated api-version),
where every operation takes its model from the body. A backend with `api=v1` gets every operation on the v1
surface; one with `api=deployments` (the default) gets each where its dated API has it (`legacy`), and the v1
surface for what only exists there (realtime client secrets).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BACKEND_APIS", "OPERATIONS", "V1_OPERATIONS", "Operation"]

BACKEND_APIS = frozenset({"deployments", "v1"})


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of the OpenAI v1 surface as the gateway forwards it."""

    body: str  # "json" | "multipart" | "" (no body)
    methods: tuple[str, ...] = ("POST",)
    legacy: str = "deployment"  # where an api=deployments backend serves it: "deployment" | "resource" | "v1"
    model_at: tuple[str, ...] = ("model",)  # where the body names the model; () for the id routes
    deferrable: bool = True  # may run on the async path (Prefer: respond-async, async models and profiles)
    counted: bool = False  # streams can be asked for usage (stream_options.include_usage)
    creates_response: bool = False  # the answer's id is a response the backend keeps (affinity)

    @property
    def azure_style(self) -> bool:
        """Also served under `/openai/deployments/{deployment}/` inbound (the Azure-native passthrough)."""
        return self.legacy == "deployment"


_NOT_DEFERRED = {"deferrable": False}
# Operation names: the path after `/v1/`; `{id}` stands for a response id (`Route.resource_id`).
OPERATIONS: dict[str, Operation] = {
    "chat/completions": Operation("json", counted=True),
    "completions": Operation("json", counted=True),
    "embeddings": Operation("json"),
    "audio/transcriptions": Operation("multipart"),
    "audio/translations": Operation("multipart"),
    "audio/speech": Operation("json"),
    "images/generations": Operation("json"),
    "images/edits": Operation("multipart"),
    # Responses live on the resource: the model is the body's. They keep their own async mode (`background`).
    "responses": Operation("json", legacy="resource", creates_response=True, deferrable=False),
    "responses/{id}": Operation("", ("GET", "DELETE"), "resource", (), deferrable=False),
    "responses/{id}/cancel": Operation("", ("POST",), "resource", (), deferrable=False),
    "responses/{id}/input_items": Operation("", ("GET",), "resource", (), deferrable=False),
    # A minted secret expires in minutes: never worth a 202.
    "realtime/client_secrets": Operation("json", legacy="v1", model_at=("session", "model"), deferrable=False),
}

# The operations of the Azure-native passthrough (and the body kind carrying their model).
V1_OPERATIONS: dict[str, str] = {name: op.body for name, op in OPERATIONS.items() if op.azure_style}
