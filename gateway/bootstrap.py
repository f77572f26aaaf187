"""The composition root of the gateway: builds every process-wide service once and hands each its parts.

Kept out of function_app.py so the composition root stays wiring only, and so tests and the benchmark build
the same objects the Functions host does. Consumers get what they need from `Services`; the pipeline does
the request path only.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .affinity import Affinity, affinity_table
from .attempt import Attempts
from .batch_index import BatchIndex, batch_index_table
from .callers import Callers
from .completions import CompletionPublisher, build_publisher
from .config import Settings, load_settings
from .credentials import BackendAuth, TokenCredential, storage_credential
from .entra import EntraValidator
from .governance import Governance
from .limiter import Limiter
from .metrics import CallerLimits, UsageMetrics
from .pipeline import Pipeline
from .pool import BackendPool
from .quotas import Quotas
from .results import ResultStore
from .slots import CallerSlots, Slots
from .state_store import StateStore
from .storage import storage_account
from .telemetry import configure_exporter
from .tracing import TraceSink
from .upstream import Transport, Upstream
from .usage import UsageRecorder
from .usage_store import UsageCounters, UsageTable

__all__ = ["Services", "build_gateway", "build_services", "instance_id", "leases_table"]


@dataclass(frozen=True, slots=True)
class Services:
    """The process-wide parts: built once, shared by the HTTP functions and the durable activities."""

    settings: Settings
    pool: BackendPool
    attempts: Attempts
    callers: Callers
    governance: Governance
    quotas: Quotas
    usage: UsageRecorder
    pipeline: Pipeline
    results: ResultStore | None  # the async path's blobs (None: no async path, e.g. in unit tests)
    completions: CompletionPublisher | None
    upstream: Upstream  # the aiohttp session (backends, unless a transport was given; Key Vault)
    auth: BackendAuth
    affinity: Affinity  # which backend keeps each response id (Responses API)
    usage_counters: UsageCounters | None = None  # per-minute usage shared by instances (None: not counted)
    batch_index: BatchIndex = field(default_factory=lambda: BatchIndex(None))  # each caller's batches, newest first

    async def close(self) -> None:
        for part in (self.usage_counters, self.results, self.completions):
            if part is not None:
                await part.close()
        await self.affinity.close()
        await self.batch_index.close()
        await self.pool.close()
        if self.quotas.limiter is not None:
            await self.quotas.limiter.close()  # gives back unspent slices
        await self.pipeline.slots.close()  # and held backend slots
        await self.quotas.caller_slots.close()  # and callers' ones
        await self.upstream.close()
        await self.auth.close()


def instance_id(env: Mapping[str, str]) -> str:
    """This process's name in shared state: the instance (Azure's id, else the host), the process and a random suffix.

    Unique per process, not per instance: a worker restarted on the same instance, or a second worker process
    (`FUNCTIONS_WORKER_PROCESS_COUNT`), must not take over the first one's slots, leases or usage rows.
    """
    machine = env.get("WEBSITE_INSTANCE_ID", "")[:16] or socket.gethostname()
    return f"{machine}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def build_services(
    settings: Settings,
    *,
    store: StateStore | None = None,
    results: ResultStore | None = None,
    completions: CompletionPublisher | None = None,
    credential: TokenCredential | None = None,
    transport: Transport | None = None,
    leases: Callable[[], Any] | None = None,
    affinity: Affinity | None = None,
    clock: Callable[[], float] = time.time,
    usage_table: UsageTable | None = None,
    batch_index: BatchIndex | None = None,
) -> Services:
    """Wires the services from settings and the stores given (tests pass Azurite-backed ones, or none).

    `leases` makes the table client of the shared limits and backend slots; without it limits are not enforced
    and each backend's concurrency is this instance's alone.
    """
    instance = store.instance_id if store else "local"
    pool = BackendPool(settings, store, instance_id=instance, clock=clock)
    upstream = Upstream(settings.connect_timeout_s, settings.read_timeout_s)
    auth = BackendAuth(upstream.get_json, credential)
    slots = Slots(settings.backends, leases, instance, settings.aging_s)
    attempts = Attempts(pool, transport or upstream, auth, settings, slots)
    entra = EntraValidator(settings, upstream.get_json) if settings.entra_tenant_id else None
    callers = Callers(settings, entra)
    governance = Governance(settings, store)
    pool.sync.listeners.append(governance.apply)  # the breakers' periodic read also carries governance rows
    usage = UsageRecorder(settings.usage_file)
    quotas = Quotas(Limiter(leases, instance) if leases else None, CallerSlots(leases, instance, settings.aging_s))
    affinity = affinity or Affinity(None)  # None: response ids are known to this process only
    pipeline = Pipeline(settings, attempts, callers, governance, quotas, usage, affinity)
    counters = UsageCounters(usage_table, settings.usage_flush_s, clock) if usage_table else None
    if counters is not None:
        usage.add_sink(counters)
    return Services(
        settings,
        pool,
        attempts,
        callers,
        governance,
        quotas,
        usage,
        pipeline,
        results,
        completions,
        upstream,
        auth,
        affinity,
        counters,
        batch_index or BatchIndex(None),
    )


def leases_table(state_table: str) -> str:
    """The table of the limits' leases, beside the state table (Table names are at most 63 characters)."""
    return state_table[:57] + "leases"


def build_gateway(env: Mapping[str, str] | None = None) -> Services:
    """Validates every setting (raising ConfigError naming the first wrong one) and wires the gateway."""
    env = os.environ if env is None else env
    settings = load_settings(env)
    account = storage_account(env, settings.state_storage)
    table = settings.state_table
    store = StateStore(lambda: account.table_client(table, storage_credential), instance_id(env))
    leases = leases_table(table)
    results = ResultStore(account, settings.results_container, storage_credential)
    completions = build_publisher(settings, account, storage_credential)
    affinity = Affinity(lambda: account.table_client(affinity_table(table), storage_credential))
    usage_table = UsageTable(lambda: account.table_client(settings.usage_table, storage_credential), store.instance_id)
    services = build_services(
        settings,
        store=store,
        results=results,
        completions=completions,
        leases=lambda: account.table_client(leases, storage_credential),
        affinity=affinity,
        usage_table=usage_table,
        batch_index=BatchIndex(lambda: account.table_client(batch_index_table(table), storage_credential)),
    )
    if configure_exporter(env):
        services.usage.add_sink(TraceSink())
    services.usage.add_sink(UsageMetrics())
    if services.quotas.limiter is not None:
        CallerLimits(services.quotas.limiter.active_limits)  # the meter keeps its callback
    return services
