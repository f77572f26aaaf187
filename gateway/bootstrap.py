"""Builds the process-wide Gateway from app settings: settings, shared state store, credentials.

Kept out of function_app.py so the composition root stays wiring only, and so tests and the benchmark build
the same object the Functions host does.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping

from .completions import build_publisher
from .config import load_settings
from .credentials import storage_credential
from .pipeline import Gateway
from .results import ResultStore
from .state_store import StateStore
from .storage import storage_account
from .telemetry import UsageMetrics, configure_exporter

__all__ = ["build_gateway", "instance_id"]


def instance_id(env: Mapping[str, str]) -> str:
    """Azure's own instance id when there is one; else host, process and a random suffix (unique per process)."""
    return env.get("WEBSITE_INSTANCE_ID", "")[:16] or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def build_gateway(env: Mapping[str, str] | None = None) -> Gateway:
    """Validates every setting (raising ConfigError naming the first wrong one) and wires the gateway."""
    env = os.environ if env is None else env
    settings = load_settings(env)
    account = storage_account(env, settings.state_storage)
    table = settings.state_table
    store = StateStore(lambda: account.table_client(table, storage_credential), instance_id(env))
    results = ResultStore(account, settings.results_container, storage_credential)
    completions = build_publisher(settings, account, storage_credential)
    gateway = Gateway(settings, store=store, results=results, completions=completions)
    configure_exporter(env)
    gateway.usage.add_sink(UsageMetrics())
    return gateway
