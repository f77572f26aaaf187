"""Each caller's use of its limits in the current window, for `GET /gateway/callers`: no storage call per view.

Read from what the answering instance holds in memory, one entry per limit key (per caller, or per caller and
model with `per=caller,model`):
- `requests` / `tokens` (RPM / TPM): `used` is what counts against the limit across every instance as this
  instance last saw the shared lease row (its own admissions exactly, the others' as of its last lease, their
  unspent slices counted as used): what the caller's `x-ratelimit-remaining-*` headers say. `admitted_here` is
  what this instance admitted itself, settled; `reset_s` is when the oldest counted amount leaves the window.
- `concurrency`: the caller's requests holding one of its `concurrency=` slots on this instance
  (`in_flight_here`); in-flight counts are not shared through storage.

A caller this instance has not served in the last two minutes has no entry: another instance may have, and
`GET /gateway/usage` has the totals of every instance.
"""

from __future__ import annotations

from typing import Any

from .limit_terms import split_limit_key
from .limiter import Limiter
from .slots import CallerSlots

__all__ = ["window_by_caller"]

_NAMES = {"rpm": "requests", "tpm": "tokens"}


def window_by_caller(limiter: Limiter | None, caller_slots: CallerSlots) -> dict[str, list[dict[str, Any]]]:
    """caller -> its entries (one per limit key, per-caller first, then by model) as this instance knows them."""
    entries: dict[tuple[str, str | None], dict[str, Any]] = {}

    def entry(key: str) -> dict[str, Any]:
        caller, model = split_limit_key(key)
        return entries.setdefault((caller, model), {"model": model})

    if limiter is not None:
        for (kind, key), window in limiter.windows().items():
            entry(key)[_NAMES.get(kind, kind)] = {
                "limit": window.limit,
                "used": window.used,
                "remaining": window.remaining,
                "reset_s": round(window.reset_s, 1),
                "admitted_here": limiter.admitted_here(key, kind) or 0,
                "shared": window.shared,  # False: storage unreachable, the limit is enforced per instance
            }
    for key, queue in list(caller_slots.queues.items()):
        entry(key)["concurrency"] = {"limit": queue.general.limit, "in_flight_here": queue.in_flight}
    out: dict[str, list[dict[str, Any]]] = {}
    for (caller, _), figures in sorted(entries.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        out.setdefault(caller, []).append(figures)  # the per-caller entry (model None, sorted as "") first
    return out
