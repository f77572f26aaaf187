"""Export to Application Insights (Azure Monitor OpenTelemetry) when APPLICATIONINSIGHTS_CONNECTION_STRING is set.

What goes where, and why (docs/architecture.md, "Observability"):
- traces: our spans only (gateway.tracing): the server span of each gateway request is its `requests` row, so
  host.json turns the Functions host's own request telemetry off (`Host.Results: None`) and nothing is
  counted twice; the distro's auto-instrumentations are off (FastAPI would add a second server span per
  request, the Azure SDK one dependency per background state refresh);
- metrics: usage, outcomes, breakers and batches (gateway.metrics), never sampled;
- logs: not exported from here. The host already forwards the worker's logs (warnings and up, host.json),
  and exporting them twice would duplicate every line.
With APPLICATIONINSIGHTS_AUTHENTICATION_STRING `Authorization=AAD[;ClientId=...]` the exporter authenticates
with the app's (user-assigned) identity, as Bicep deploys it: the component refuses instrumentation keys.
`azure-monitor-opentelemetry` raises without a connection string, and is never imported without one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from typing import Any

from . import tracing

__all__ = ["AUTO_INSTRUMENTATIONS", "configure_exporter", "exporter_options"]

log = logging.getLogger("gateway.telemetry")

# The distro's auto-instrumentations, all off: our spans are the only ones (see the module docstring).
AUTO_INSTRUMENTATIONS = ("azure_sdk", "django", "fastapi", "flask", "psycopg2", "requests", "urllib", "urllib3")


def exporter_options(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The `configure_azure_monitor` options for these settings; None when no connection string is set."""
    connection = env.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip()
    if not connection:
        return None
    options: dict[str, Any] = {
        "connection_string": connection,
        "instrumentation_options": {name: {"enabled": False} for name in AUTO_INSTRUMENTATIONS},
        # Live metrics poll every second per instance and the performance counters add a processor per span:
        # both cost CPU on the request path; the Functions host reports process counters itself.
        "enable_live_metrics": False,
        "enable_performance_counters": False,
    }
    auth = dict(
        part.split("=", 1)
        for part in env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "").split(";")
        if "=" in part
    )
    if auth.get("Authorization", "").strip().upper() == "AAD":
        from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

        client_id = auth.get("ClientId", "").strip()
        options["credential"] = (
            ManagedIdentityCredential(client_id=client_id) if client_id else DefaultAzureCredential()
        )
    return options


def configure_exporter(env: Mapping[str, str], process_env: MutableMapping[str, str] | None = None) -> bool:
    """Sets up Azure Monitor export and our spans once per process; False (nothing imported) when not configured.

    `process_env` is where the distro reads its OTEL_* variables (os.environ): logs are turned off there
    unless the operator chose otherwise (OTEL_LOGS_EXPORTER).
    """
    options = exporter_options(env)
    if options is None:
        return False
    process_env = os.environ if process_env is None else process_env
    process_env.setdefault("OTEL_LOGS_EXPORTER", "none")
    from azure.monitor.opentelemetry import configure_azure_monitor

    configure_azure_monitor(**options)
    tracing.enable()
    log.info("Exporting traces and metrics to Application Insights")
    return True
