"""Token usage and duration as OpenTelemetry metrics, exported to Application Insights when configured.

Metrics follow the OpenTelemetry GenAI semantic conventions (`gen_ai.client.token.usage` with
`gen_ai.token.type` input/output, `gen_ai.client.operation.duration`) plus `gateway.*` attributes for the
backend, deployment, caller and whether the count is an estimate, so chargeback queries need no log parsing.
`azure-monitor-opentelemetry` is configured only when APPLICATIONINSIGHTS_CONNECTION_STRING is set (it raises
without one); with APPLICATIONINSIGHTS_AUTHENTICATION_STRING `Authorization=AAD` it exports with the app's
identity, as local auth is disabled on the Application Insights resource.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from opentelemetry import metrics

from .usage import UsageRecord

__all__ = ["UsageMetrics", "configure_exporter"]

log = logging.getLogger("gateway.telemetry")

# gen_ai.operation.name values for the operations the gateway forwards.
_OPERATIONS = {
    "chat/completions": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "images/generations": "generate_content",
    "images/edits": "generate_content",
    "responses": "chat",  # the semantic conventions' name for the Responses API's create call
}


def configure_exporter(env: Mapping[str, str]) -> bool:
    """Sets up Azure Monitor export once per process; False (and nothing imported) when not configured."""
    connection = env.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "")
    if not connection:
        return False
    from azure.monitor.opentelemetry import configure_azure_monitor

    options: dict[str, Any] = {"connection_string": connection, "logger_name": "gateway"}
    auth = dict(
        part.split("=", 1)
        for part in env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "").split(";")
        if "=" in part
    )
    if auth.get("Authorization", "").upper() == "AAD":
        from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

        client_id = auth.get("ClientId")
        options["credential"] = (
            ManagedIdentityCredential(client_id=client_id) if client_id else DefaultAzureCredential()
        )
    configure_azure_monitor(**options)
    log.info("Exporting metrics and logs to Application Insights")
    return True


class UsageMetrics:
    """A usage-recorder sink: one token histogram per direction and one duration histogram."""

    def __init__(self, meter: metrics.Meter | None = None) -> None:
        meter = meter or metrics.get_meter("azure-ai-gateway")
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per request, by direction"
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="Gateway request duration, attempts included"
        )

    def __call__(self, record: UsageRecord) -> None:
        attributes: dict[str, str | bool | int] = {
            "gen_ai.provider.name": "azure.ai.openai",
            "gen_ai.operation.name": _OPERATIONS.get(record.operation, record.operation),
            "gen_ai.request.model": record.model or "",
            "gateway.deployment": record.deployment or "",
            "gateway.backend": record.backend or "",
            "gateway.api_style": record.api_style,
            "gateway.streaming": record.streaming,
            "gateway.attempts": record.attempts,
            "http.response.status_code": record.status,
        }
        if record.caller:
            attributes["gateway.caller"] = record.caller
        if record.error or record.status >= 400:
            attributes["error.type"] = record.error or str(record.status)
        self._duration.record(record.duration_ms / 1000, attributes)
        usage = record.usage
        if usage is None:
            return
        attributes["gateway.usage_estimated"] = usage.estimated
        self._tokens.record(usage.prompt_tokens, {**attributes, "gen_ai.token.type": "input"})
        if usage.completion_tokens or record.operation != "embeddings":
            self._tokens.record(usage.completion_tokens, {**attributes, "gen_ai.token.type": "output"})
