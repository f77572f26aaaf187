"""Every app setting besides the backends, declared once: name, the `Settings` field it fills, default, parser, doc.

`SETTINGS` (name -> default text), the parsing in `config.load_settings`, the defaults of the `config.Settings`
dataclass and the one-line docs the README repeats all derive from `ENTRIES`, so they cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .profiles import parse_caller_map

__all__ = [
    "DEFAULTS",
    "ENTRIES",
    "HTTP_ANSWER_LIMIT_S",
    "NAME",
    "SETTINGS",
    "SETTING_DOCS",
    "STRATEGIES",
    "Setting",
]

STRATEGIES = frozenset({"priority", "weighted", "round-robin", "random", "latency", "capacity"})
# The limit Azure puts on an HTTP-triggered function's answer, whatever functionTimeout says.
HTTP_ANSWER_LIMIT_S = 230
# A backend or caller name: shown in headers, logs and usage records.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

# (stripped text, setting name) -> the field's value; raises ConfigError naming the setting, never echoing a secret.
Parser = Callable[[str, str], Any]


@dataclass(frozen=True, slots=True)
class Setting:
    """One app setting, the only place its name, default, parser and doc are written."""

    name: str
    field: str | None  # the Settings field it fills; None: load_settings reads it itself (GATEWAY_CONFIG_FILE)
    default: str  # the text used when the setting is absent ("" = unset)
    parse: Parser
    doc: str  # one line, as in the README's Configuration table
    blank_is_default: bool = False  # an empty value means the default instead of being parsed

    def value(self, env: Mapping[str, str]) -> Any:
        """This setting's parsed value in `env`, or its parsed default when `env` does not set it."""
        text = env.get(self.name, self.default).strip()
        if not text and self.blank_is_default:
            text = self.default
        return self.parse(text, self.name)


def _text(value: str, setting: str) -> str:
    return value


def _text_or_none(value: str, setting: str) -> str | None:
    return value or None


def _names(value: str, setting: str) -> frozenset[str]:
    """A comma list of names; blanks are ignored."""
    return frozenset(n.strip() for n in value.split(",") if n.strip())


def _number[T: (int, float)](kind: type[T], *, minimum: float) -> Callable[[str, str], T]:
    """A parser for a (whole) number of at least `minimum`."""

    def parse(value: str, setting: str) -> T:
        try:
            number = kind(value)
        except ValueError:
            raise ConfigError(setting, f"must be a {'whole ' if kind is int else ''}number") from None
        if number < minimum:
            raise ConfigError(setting, f"must be at least {minimum}")
        return number

    return parse


def _ms_as_seconds(value: str, setting: str) -> float:
    """Whole milliseconds (at least 50) in the setting, seconds in the field."""
    return _number(int, minimum=50)(value, setting) / 1000


def _sync_budget(value: str, setting: str) -> float:
    seconds = _number(float, minimum=1)(value, setting)
    if seconds >= HTTP_ANSWER_LIMIT_S:
        raise ConfigError(setting, f"must stay under {HTTP_ANSWER_LIMIT_S} s, the limit Azure puts on HTTP answers")
    return seconds


def _fraction(value: str, setting: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(setting, "must be a number between 0 and 1") from None
    if not 0 <= number <= 1:
        raise ConfigError(setting, "must be between 0 and 1")
    return number


def _header_names(value: str, setting: str) -> frozenset[str]:
    names = frozenset(n.strip().lower() for n in value.split(",") if n.strip())
    for name in names:
        if not re.fullmatch(r"[a-z0-9!#$%&'*+.^_`|~-]{1,64}", name):
            raise ConfigError(setting, "must be a comma list of header names")
    return names


def _profile_name(value: str, setting: str) -> str:
    name = value.lower()
    if name and not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", name):
        raise ConfigError(setting, "must name a profile (lower-case letters, digits, '_' or '-')")
    return name


def _flag(value: str, setting: str) -> bool:
    text = value.lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(setting, "must be true or false")
    return text in ("true", "1", "yes")


def _auth_disabled(value: str, setting: str) -> bool:
    auth = value.lower()
    if auth not in ("keys", "none"):
        raise ConfigError(setting, "must be 'keys' (default) or 'none'")
    return auth == "none"


def _entra_tenant(value: str, setting: str) -> str:
    """A tenant id or verified domain; the multi-tenant aliases would accept tokens from any organisation."""
    multi_tenant = value.lower() in ("common", "organizations", "consumers")
    if value and (multi_tenant or not re.fullmatch(r"(?:[A-Za-z0-9][A-Za-z0-9-]*\.)*[A-Za-z0-9][A-Za-z0-9-]*", value)):
        raise ConfigError(setting, "must be a tenant id (GUID) or domain, not common/organizations/consumers")
    return value


def _override_url(value: str, setting: str) -> str:
    """An https URL (http only on loopback, for tests): keys fetched in clear text could be swapped in transit."""
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise ConfigError(setting, "must be an https URL") from None
    if value and not (host and (parts.scheme == "https" or (parts.scheme == "http" and host in _LOOPBACK))):
        raise ConfigError(setting, "must be an https URL (http only for 127.0.0.1 or localhost)")
    if parts.query or parts.fragment:
        raise ConfigError(setting, "must not carry a query or fragment")
    return value


def _api_version(value: str, setting: str) -> str:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", value):
        raise ConfigError(setting, "must look like 2024-10-21 or 2025-04-01-preview")
    return value


def _api_keys(value: str, setting: str) -> Mapping[str, str]:
    """`team-a:KEY1,team-b:KEY2,KEY3` -> {key: caller name, "" when unnamed}. Never echoes a key.

    The text before an entry's first ':' names the caller when it is a valid name, so `team-a:abc:def` is key
    `abc:def` of `team-a`; otherwise (`a/b:c`, `:abc`) the whole entry is an unnamed key. A key that itself
    contains ':' after a name-like prefix must therefore be given a caller name.
    """
    keys: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in value.split(","))):
        name, sep, key = entry.partition(":")
        if not sep or not NAME.match(name):
            name, key = "", entry
        if not key:
            raise ConfigError(setting, "an entry has a caller name but no key")
        if name and name in keys.values():
            raise ConfigError(setting, f"the caller name '{name}' is used twice")
        keys[key] = name
    return MappingProxyType(keys)


def _strategy(value: str, setting: str) -> str:
    value = value.lower()
    if value not in STRATEGIES:
        raise ConfigError(setting, f"must be one of {', '.join(sorted(STRATEGIES))}")
    return value


def _strategies(value: str, setting: str) -> Mapping[str, str]:
    """`gpt-4o=latency,text-embedding-3-small=weighted`: a strategy per model alias."""
    result: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in value.split(","))):
        model, sep, strategy = entry.partition("=")
        if not sep or not model.strip():
            raise ConfigError(setting, "must be a comma list of model=strategy")
        result[model.strip()] = _strategy(strategy.strip(), setting)
    return MappingProxyType(result)


def _table_name(value: str, setting: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,62}", value):
        raise ConfigError(setting, "must be 3-63 letters and digits, starting with a letter")
    return value


def _schedule(value: str, setting: str) -> str:
    if len(value.split()) != 6:
        raise ConfigError(setting, "must be a six-field NCRONTAB expression, e.g. */30 * * * * *")
    return value


def _container(value: str, setting: str) -> str:
    """A blob container or Storage queue name."""
    if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", value):
        raise ConfigError(setting, "must be 3-63 lower-case letters, digits and single hyphens")
    return value


_S = Setting
_SECONDS = _number(float, minimum=0.1)
_COUNT = _number(int, minimum=1)
ENTRIES: tuple[Setting, ...] = (
    _S("GATEWAY_CONFIG_FILE", None, "", _text, "JSON/YAML file with a `backends` list"),
    _S("GATEWAY_API_KEYS", "api_keys", "", _api_keys,
       "comma-separated keys clients present as `api-key` or `Authorization: Bearer`, each optionally named after"
       " its caller: `team-a:KEY1,team-b:KEY2,KEY3`. Compared in constant time. The name (or, for an unnamed key,"
       " `key:` + a fingerprint of it — never the key) is the caller in usage records, metrics, completion messages"
       " and result ownership."),
    _S("GATEWAY_AUTH", "auth_disabled", "keys", _auth_disabled,
       "`keys`: with no keys configured **every request is refused (401)**. `none` turns inbound auth off"
       " explicitly (behind another authenticating layer only)."),
    # Inbound Microsoft Entra ID bearer tokens (gateway/entra.py); on when the tenant and the audience are set.
    _S("GATEWAY_ENTRA_TENANT_ID", "entra_tenant_id", "", _entra_tenant,
       "tenant id (or domain) whose Microsoft Entra ID tokens are accepted as `Authorization: Bearer`; needs"
       " `GATEWAY_ENTRA_AUDIENCE`. The caller is `app:<appid>` (an application) or `user:<oid>` (a user)"),
    _S("GATEWAY_ENTRA_AUDIENCE", "entra_audiences", "", _names,
       "accepted `aud` values, comma separated: the gateway's app ID URI and/or client id"),
    _S("GATEWAY_ENTRA_ISSUER", "entra_issuer", "", _override_url,
       "the only accepted `iss` (sovereign clouds); its OpenID configuration gives the keys. Default: the"
       " public cloud's v2 and v1 issuers of the tenant"),
    _S("GATEWAY_ENTRA_JWKS_URL", "entra_jwks_url", "", _override_url,
       "signing keys URL, instead of the one the OpenID configuration names"),
    _S("GATEWAY_API_VERSION", "api_version", "2024-10-21", _api_version,
       "api-version for v1 requests and Azure requests that carry none"),
    _S("GATEWAY_RESPONSES_API_VERSION", "responses_api_version", "2025-04-01-preview", _api_version,
       "api-version of the Responses API on `api=deployments` backends (`/openai/responses`), when the client"
       " sent no dated one"),
    _S("GATEWAY_CONNECT_TIMEOUT_S", "connect_timeout_s", "5", _SECONDS, "TCP/TLS connect timeout per attempt"),
    _S("GATEWAY_READ_TIMEOUT_S", "read_timeout_s", "120", _SECONDS,
       "longest silence while waiting for headers or the next chunk (a capped non-streamed answer may take longer)"),
    _S("GATEWAY_SYNC_BUDGET_S", "sync_budget_s", "200", _sync_budget,
       "total time for all attempts of a synchronous request; must stay under Azure's 230 s HTTP limit"),
    _S("GATEWAY_MAX_ATTEMPTS", "max_attempts", "3", _COUNT, "backends tried per request"),
    _S("GATEWAY_MAX_BODY_BYTES", "max_body_bytes", str(25 * 1024 * 1024), _number(int, minimum=1024),
       "larger request bodies get 413"),
    _S("GATEWAY_USAGE_FILE", "usage_file", "", _text_or_none,
       "append usage records as JSON lines (local chargeback/debugging)"),
    _S("GATEWAY_USAGE_TABLE", "usage_table", "gatewayusage", _table_name,
       "table of the per-minute usage counters behind `GET /gateway/usage` (in the state storage account)"),
    _S("GATEWAY_USAGE_FLUSH_S", "usage_flush_s", "10", _number(float, minimum=1),
       "an instance writes its usage counters at most this often (nothing is written per request)"),
    # Backend pool: strategies, shared breaker state, probes.
    _S("GATEWAY_STRATEGY", "strategy", "priority", _strategy,
       "strategy within a priority tier: `priority`, `weighted`, `round-robin`, `random`, `latency`, `capacity`"),
    _S("GATEWAY_STRATEGIES", "strategies", "", _strategies, "per-model strategies, `model=strategy,...`"),
    _S("GATEWAY_STATE_STORAGE", "state_storage", "", _text,
       "connection string of the account holding breaker/health state; empty: `AzureWebJobsStorage` (or its"
       " identity-based `__accountName`/`__tableServiceUri`/`__clientId`)"),
    _S("GATEWAY_STATE_TABLE", "state_table", "gatewaystate", _table_name, "table name"),
    _S("GATEWAY_STATE_REFRESH_MS", "state_refresh_s", "1000", _ms_as_seconds,
       "how stale an instance's view of the shared state may get"),
    _S("GATEWAY_BREAKER_FAILURES", "breaker_failures", "5", _COUNT, "failures within the window that open a breaker"),
    _S("GATEWAY_BREAKER_WINDOW_S", "breaker_window_s", "10", _SECONDS, "the sliding window for those failures"),
    _S("GATEWAY_BREAKER_COOLDOWN_S", "breaker_cooldown_s", "10", _SECONDS, "how long failures keep a breaker open"),
    _S("GATEWAY_DEFAULT_RETRY_AFTER_S", "default_retry_after_s", "10", _number(float, minimum=0),
       "how long a 429 without Retry-After opens a breaker"),
    _S("GATEWAY_MAX_WAIT_S", "max_wait_s", "30", _number(float, minimum=0),
       "longest a synchronous request waits for a cooling backend before answering 429"),
    _S("GATEWAY_PROBE_SCHEDULE", "probe_schedule", "*/30 * * * * *", _schedule,
       "NCRONTAB schedule of the health probes"),
    _S("GATEWAY_LATENCY_EXPLORE", "latency_explore", "0.05", _fraction,
       "share of `latency` choices that explore another backend"),
    _S("GATEWAY_CAPACITY_WINDOW_S", "capacity_window_s", "60", _number(float, minimum=1),
       "how long remaining-capacity headers stay valid"),
    # Async path: Durable orchestrations, results in Blob Storage, completion messages.
    _S("GATEWAY_ASYNC_MODELS", "async_models", "", _names,
       "models whose requests always run asynchronously, comma separated"),
    _S("GATEWAY_ASYNC_CALLERS", "async_callers", "", _names,
       "deprecated alias of a profile with `async=always`: callers whose requests always run asynchronously"),
    _S("GATEWAY_ASYNC_TTL_S", "async_ttl_s", "86400", _number(float, minimum=1),
       "deadline of an async request; past it the work ends as `expired`"),
    _S("GATEWAY_REQUIRED_HEADERS", "required_headers", "", _header_names,
       "headers every request must carry, comma separated (400 naming the missing one)"),
    _S("GATEWAY_FORWARD_HEADERS", "forward_headers", "", _header_names,
       "extra inbound headers forwarded to backends, comma separated; other non-standard headers are dropped"),
    _S("GATEWAY_AGING_S", "aging_s", "5", _number(float, minimum=0.1),
       "a request waiting for a backend slot moves up one priority level per this many seconds"),
    _S("GATEWAY_CALLER_PROFILES", "caller_profiles", "", parse_caller_map,
       "callers to profiles: `team-a=gold,app:<client-id>=silver,role:Batch.Submit=batch,group:<object-id>=gold`"),
    _S("GATEWAY_DEFAULT_PROFILE", "default_profile", "", _profile_name,
       "profile of callers no mapping names; unset: such callers have no limits"),
    _S("GATEWAY_EXPOSE_DURABLE_URLS", "expose_durable_urls", "false", _flag,
       "also answer 202s with the Durable management URLs (system key!): single-tenant deployments only"),
    _S("GATEWAY_ASYNC_MAX_ATTEMPTS", "async_max_attempts", "20", _COUNT, "backend attempts of one async request"),
    _S("GATEWAY_TOKENS_PER_SECOND", "tokens_per_second", "40", _number(float, minimum=0.1),
       "assumed generation speed until one is observed, and the slowest one a capped non-streamed answer is "
       "waited for at"),
    _S("GATEWAY_RESULTS_CONTAINER", "results_container", "gateway-results", _container,
       "blob container for async request bodies, results and sent completions"),
    _S("GATEWAY_RESULT_INLINE_BYTES", "result_inline_bytes", "32768", _number(int, minimum=0),
       "larger results are referenced by URL in the orchestration output, not inlined"),
    _S("GATEWAY_COMPLETIONS_ENTITY", "completions_entity", "completions", _text,
       "Service Bus topic or queue for completion messages", blank_is_default=True),
    _S("GATEWAY_COMPLETIONS_QUEUE", "completions_queue", "gateway-completions", _container,
       "Storage queue used when Service Bus is not configured"),
    _S("GATEWAY_PURGE_AFTER_DAYS", "purge_after_days", "7", _number(float, minimum=0),
       "finished async instances and their blobs are purged after this (0: at the next housekeeping)"),
    _S("GATEWAY_HOUSEKEEPING_SCHEDULE", "housekeeping_schedule", "0 */15 * * * *", _schedule,
       "NCRONTAB schedule of the housekeeping timer"),
    # Batch API: files and batches managed across backends.
    _S("GATEWAY_BATCH_MAX_BYTES", "batch_max_bytes", str(100 * 1024 * 1024), _number(int, minimum=1024),
       "largest batch input file"),
    _S("GATEWAY_BATCH_MAX_LINES", "batch_max_lines", "100000", _COUNT, "most requests in one batch file"),
    _S("GATEWAY_BATCH_MAX_RESUBMITS", "batch_max_resubmits", "2", _number(int, minimum=0),
       "rounds after the first that resubmit unanswered lines to another backend"),
    _S("GATEWAY_BATCH_POLL_MIN_S", "batch_poll_min_s", "10", _number(float, minimum=0.05),
       "first wait before polling a backend batch (doubles each poll)"),
    _S("GATEWAY_BATCH_POLL_MAX_S", "batch_poll_max_s", "300", _number(float, minimum=0.05),
       "longest wait between polls"),
    # Service Bus for completion messages (the Functions identity-based connection convention).
    _S("COMPLETIONS_SERVICEBUS", "servicebus_connection", "", _text,
       "Service Bus connection string (instead of the identity settings)"),
    _S("COMPLETIONS_SERVICEBUS__fullyQualifiedNamespace", "servicebus_namespace", "", _text,
       "`<ns>.servicebus.windows.net`, reached with the app's identity"),
    _S("COMPLETIONS_SERVICEBUS__clientId", "servicebus_client_id", "", _text,
       "client id of a user-assigned identity for Service Bus"),
)  # fmt: skip

# Every setting besides the backends, with its default text ("" = unset); unknown GATEWAY_* names are refused.
SETTINGS: Mapping[str, str] = MappingProxyType({e.name: e.default for e in ENTRIES})
SETTING_DOCS: Mapping[str, str] = MappingProxyType({e.name: e.doc for e in ENTRIES})
# Settings field -> its default text parsed: the defaults of the Settings dataclass.
DEFAULTS: Mapping[str, Any] = MappingProxyType({e.field: e.value({}) for e in ENTRIES if e.field})
