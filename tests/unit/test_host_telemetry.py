"""host.json against what the gateway emits: nothing counted twice, nothing carrying usage sampled away.

- Requests: the gateway's server span is each request's `requests` row (gateway/tracing.py), so the host's own
  request telemetry (category `Host.Results`) is off; otherwise every call would be two requests.
- Usage: it travels as metrics, which are never sampled. The per-request usage log line (INFO on
  `gateway.usage`) would reach Application Insights only through the host's log forwarding, which samples
  traces: the host forwards worker logs (category `Function.<name>.User`) from Warning up only, so no usage
  line is ever subject to sampling, and none is exported twice (gateway/telemetry.py exports no logs).
"""

import json
import logging

from gateway.telemetry import exporter_options
from gateway.usage import UsageRecorder

LEVELS = ["Trace", "Debug", "Information", "Warning", "Error", "Critical", "None"]


def host_json(repo_root) -> dict:
    return json.loads((repo_root / "host.json").read_text(encoding="utf-8"))


def level(log_levels: dict[str, str], category: str) -> str:
    """The host's level for a category: the longest matching prefix, as the host resolves it."""
    matches = [k for k in log_levels if category == k or category.startswith(k + ".")]
    return log_levels[max(matches, key=len)] if matches else log_levels.get("default", "Information")


def test_the_host_does_not_count_requests_our_server_span_already_counts(repo_root):
    levels = host_json(repo_root)["logging"]["logLevel"]
    assert level(levels, "Host.Results") == "None"


def test_usage_log_lines_never_go_through_host_sampling(repo_root, caplog):
    logging_config = host_json(repo_root)["logging"]
    worker_logs = level(logging_config["logLevel"], "Function.openai_v1.User")
    with caplog.at_level(logging.INFO, logger="gateway.usage"):
        from tests.unit.test_telemetry import record

        UsageRecorder().record(record())
    [usage_line] = [r for r in caplog.records if r.name == "gateway.usage"]
    host_level = {"Information": logging.INFO, "Warning": logging.WARNING, "Error": logging.ERROR}.get(worker_logs, 99)
    assert usage_line.levelno < host_level  # the host never forwards it, so its sampling never sees it
    sampling = logging_config["applicationInsights"]["samplingSettings"]
    assert {"Request", "Exception"} <= set(sampling["excludedTypes"].split(";"))


def test_our_exporter_sends_no_logs_for_the_host_to_duplicate(monkeypatch):
    from gateway import telemetry

    options = exporter_options({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x"})
    assert options is not None and "logger_name" not in options
    env: dict[str, str] = {}
    calls = []
    # The distro itself is replaced (its providers are process-global); the gateway's code runs as is.
    monkeypatch.setattr("azure.monitor.opentelemetry.configure_azure_monitor", lambda **kw: calls.append(kw))
    try:
        assert telemetry.configure_exporter({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x"}, env)
    finally:
        telemetry.tracing.disable()
    assert env["OTEL_LOGS_EXPORTER"] == "none" and len(calls) == 1
