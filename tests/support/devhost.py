"""Development host: serves the HTTP functions of a Functions v2 app through uvicorn.

    python -m tests.support.devhost --port 7071 [--host 127.0.0.1] [--app function_app]   (--port 0: any free port)
                                    [--settings local.settings.json | --no-settings] [--cwd DIR]

It stands in for ``func start`` where Core Tools cannot run (tests, the benchmark, newcomers). It is
NOT a production host: no scale-out, no retries, no non-HTTP triggers. What it reproduces:

* settings: ``Values`` of local.settings.json go into ``os.environ`` before the app is imported; a
  variable already set in the environment wins, as with Core Tools;
* routes: ``route`` / ``methods`` / ``authLevel`` of every ``httpTrigger``, with host.json's
  ``extensions.http.routePrefix`` (default ``api``); templates ``{name}``, ``{name:constraint}``,
  ``{name?}`` and ``{*rest}``; literal segments win over parameters (route precedence);
* requests: the user function gets a ``starlette.requests.Request`` (what the FastAPI HTTP streaming
  extension passes) and its response is sent as is, so a ``StreamingResponse`` streams chunk by chunk;
* auth: FUNCTION/ADMIN routes need ``x-functions-key`` or ``?code=`` equal to ``DEVHOST_FUNCTION_KEY``;
* errors: an unhandled exception gives 500 with an empty body (traceback on stderr only); unknown
  route or method gives 404.
* durable: orchestrators, activities and ``durableClient`` bindings run on the in-memory Durable stand-in
  of tests/support/durable_standin.py (the real Durable extension cannot run here).

Functions whose bindings go beyond the HTTP trigger and HTTP output need a provider for each extra
binding type in ``BINDING_PROVIDERS`` (binding type -> coroutine giving the keyword argument's value);
without one they are skipped with a warning.

``DevHost`` runs this module in a child process for tests, on port 0: the host binds it and prints the port it
got (``LISTENING`` line), which ``DevHost`` reads back.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import importlib
import inspect
import json
import os
import re
import signal
import socket
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import Message, Receive, Scope, Send

from tests.support.ports import ChildProcess, log_tail

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FUNCTION_KEY = "devhost-function-key"
FUNCTION_KEY_SETTING = "DEVHOST_FUNCTION_KEY"
DEFAULT_ROUTE_PREFIX = "api"
HTTP_TRIGGER = "httpTrigger"
HTTP_OUTPUT = "http"
# Printed once the host's socket is bound, with its URL; DevHost reads the port from it.
LISTENING = "devhost: listening on"
_LISTENING_PORT = re.compile(rf"^{re.escape(LISTENING)} http://\S+:(\d+)$", re.MULTILINE)

# Extension point: binding type -> provider of the value of that binding's keyword argument.
# A provider is called per request as ``await provider(binding_json, request)``.
BindingProvider = Callable[[Mapping[str, Any], Request], Awaitable[Any]]
BINDING_PROVIDERS: dict[str, BindingProvider] = {}


def warn(message: str) -> None:
    print(f"devhost: WARNING: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- settings


def read_settings(path: Path) -> dict[str, str]:
    """The ``Values`` of a local.settings.json file ({} when the file does not exist)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    values = data.get("Values") or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: 'Values' must be an object")
    return {str(k): _setting_text(v) for k, v in values.items()}


def _setting_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def apply_settings(values: Mapping[str, str], environ: MutableMapping[str, str]) -> list[str]:
    """Copy settings into ``environ`` unless already set there (the environment wins).
    Returns the names that were applied."""
    applied = []
    for name, value in values.items():
        if name not in environ:
            environ[name] = value
            applied.append(name)
    return applied


def read_route_prefix(app_dir: Path) -> str:
    """host.json ``extensions.http.routePrefix`` ("api" when host.json or the key is absent)."""
    host_json = app_dir / "host.json"
    if not host_json.is_file():
        return DEFAULT_ROUTE_PREFIX
    data = json.loads(host_json.read_text(encoding="utf-8"))
    prefix = data.get("extensions", {}).get("http", {}).get("routePrefix", DEFAULT_ROUTE_PREFIX)
    return str(prefix).strip("/")


# ---------------------------------------------------------------------------------- route templates


class _StringValueConvertor(Convertor[str]):
    """Matches a regex and keeps the value a string (the Functions host passes route values as text)."""

    def __init__(self, regex: str) -> None:
        self.regex = regex

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return str(value)


# ASP.NET route constraints we enforce; any other constraint matches like a plain parameter.
_CONSTRAINT_CONVERTORS = {
    "int": ("fn_int", r"-?[0-9]+"),
    "long": ("fn_int", r"-?[0-9]+"),
    "float": ("fn_number", r"-?[0-9]+(?:\.[0-9]+)?"),
    "double": ("fn_number", r"-?[0-9]+(?:\.[0-9]+)?"),
    "decimal": ("fn_number", r"-?[0-9]+(?:\.[0-9]+)?"),
    "bool": ("fn_bool", r"[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]"),
    "alpha": ("fn_alpha", r"[A-Za-z]+"),
    "guid": ("fn_guid", r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"),
}
for _name, _regex in dict(_CONSTRAINT_CONVERTORS.values()).items():
    register_url_convertor(_name, _StringValueConvertor(_regex))

_PARAM = re.compile(r"\{([^{}]+)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Route precedence ranks per segment (lower = more specific), as ASP.NET orders routes.
_LITERAL, _COMPLEX, _CONSTRAINED, _PARAMETER, _CATCH_ALL = range(5)


@dataclass(frozen=True)
class _Segment:
    starlette: str  # this segment in Starlette syntax
    rank: int
    droppable: bool  # optional or catch-all: the route also matches without it (only at the end)


def _parse_parameter(token: str, template: str) -> tuple[str, int, bool]:
    """One ``{...}`` token -> (Starlette parameter, rank, optional-or-catch-all)."""
    catch_all = token.startswith("*")
    token = token.lstrip("*")
    optional = token.endswith("?")
    token = token.rstrip("?")
    token, _, default = token.partition("=")
    name, *constraints = token.split(":")
    if not _NAME.fullmatch(name):
        raise ValueError(f"route {template!r}: unsupported parameter name {name!r}")
    if catch_all:
        return f"{{{name}:path}}", _CATCH_ALL, True
    convertor = "str"
    for constraint in constraints:
        known = _CONSTRAINT_CONVERTORS.get(constraint.split("(")[0].lower())
        if known:
            convertor = known[0]
            break
        warn(f"route {template!r}: constraint {constraint!r} is not enforced by the development host")
    rank = _CONSTRAINED if constraints else _PARAMETER
    return f"{{{name}:{convertor}}}", rank, optional or bool(default)


def _parse_segment(segment: str, template: str) -> _Segment:
    tokens = list(_PARAM.finditer(segment))
    if not tokens:
        return _Segment(segment, _LITERAL, False)
    if len(tokens) == 1 and tokens[0].span() == (0, len(segment)):
        param, rank, droppable = _parse_parameter(tokens[0].group(1), template)
        return _Segment(param, rank, droppable)
    # Complex segment such as "{name}.{ext}": keep literals, parameters are required here.
    parts, last = [], 0
    for token in tokens:
        parts.append(segment[last : token.start()])  # Starlette escapes literal text itself
        parts.append(_parse_parameter(token.group(1), template)[0])
        last = token.end()
    parts.append(segment[last:])
    return _Segment("".join(parts), _COMPLEX, False)


def translate_route(template: str, prefix: str = DEFAULT_ROUTE_PREFIX) -> list[tuple[str, tuple[int, ...]]]:
    """A Functions route template -> Starlette paths, each with its precedence key.

    Several paths come out when trailing segments are optional or a catch-all (which, as in ASP.NET,
    also matches when empty): ``files/{*rest}`` -> ``/files/{rest:path}`` and ``/files``.
    """
    segments = [_parse_segment(s, template) for s in template.strip("/").split("/") if s]
    prefix_segments = [_Segment(s, _LITERAL, False) for s in prefix.strip("/").split("/") if s]
    variants = [segments]
    while variants[-1] and variants[-1][-1].droppable:
        variants.append(variants[-1][:-1])
    paths = []
    for variant in variants:
        full = prefix_segments + variant
        paths.append(("/" + "/".join(s.starlette for s in full), tuple(s.rank for s in full)))
    return paths


# ---------------------------------------------------------------------------------------- functions


@dataclass
class HttpFunction:
    name: str
    route: str
    methods: list[str] | None  # None: every method
    auth_level: str  # ANONYMOUS, FUNCTION or ADMIN
    trigger_param: str
    user_function: Callable[..., Any]
    extra_bindings: list[dict[str, Any]] = field(default_factory=list)


def discover_http_functions(
    app: Any, providers: Mapping[str, BindingProvider] | None = None
) -> tuple[list[HttpFunction], list[str]]:
    """The HTTP functions of a FunctionApp/DFApp we can serve, and warnings about the ones we skip.

    Calls ``app.get_functions()`` once (a second call on the same app raises in azure-functions)."""
    providers = BINDING_PROVIDERS if providers is None else providers
    served, skipped = [], []
    for fn in app.get_functions():
        name = fn.get_function_name()
        bindings = json.loads(fn.get_function_json())["bindings"]
        trigger = next((b for b in bindings if b.get("type") == HTTP_TRIGGER), None)
        if trigger is None:
            continue
        extra = [
            b
            for b in bindings
            if b is not trigger and not (b.get("type") == HTTP_OUTPUT and b.get("name") == "$return")
        ]
        unsupported = sorted({b.get("type", "?") for b in extra} - set(providers))
        if unsupported:
            skipped.append(
                f"function {name!r} skipped: no development-host provider for binding type(s) {', '.join(unsupported)}"
            )
            continue
        methods = trigger.get("methods")
        served.append(
            HttpFunction(
                name=name,
                route=trigger.get("route") or name,
                methods=[m.upper() for m in methods] if methods else None,
                auth_level=str(trigger.get("authLevel") or "FUNCTION").upper(),
                trigger_param=trigger["name"],
                user_function=fn.get_user_function(),
                extra_bindings=extra,
            )
        )
    return served, skipped


class FunctionEndpoint:
    """ASGI endpoint invoking one user function the way the worker does for HTTP streaming apps."""

    def __init__(self, fn: HttpFunction, function_key: str, providers: Mapping[str, BindingProvider]) -> None:
        self.fn = fn
        self.function_key = function_key
        self.providers = providers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        if self.fn.auth_level != "ANONYMOUS" and not self._authorized(request):
            await Response(status_code=401)(scope, receive, send)
            return
        try:
            kwargs: dict[str, Any] = {self.fn.trigger_param: request}
            for binding in self.fn.extra_bindings:
                kwargs[binding["name"]] = await self.providers[binding["type"]](binding, request)
            response = await self._invoke(kwargs)
            if not isinstance(response, Response):
                raise TypeError(f"returned {type(response).__name__}, expected a Starlette/FastAPI Response")
        except Exception:
            self._log_exception("failed")
            await Response(status_code=500)(scope, receive, send)
            return

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await response(scope, receive, tracking_send)
        except Exception:
            self._log_exception("failed while sending its response")
            if not started:
                await Response(status_code=500)(scope, receive, send)
            # Otherwise the response is cut short; uvicorn closes the connection.

    async def _invoke(self, kwargs: dict[str, Any]) -> Any:
        user_function = self.fn.user_function
        if inspect.iscoroutinefunction(user_function):
            return await user_function(**kwargs)
        result = await asyncio.to_thread(user_function, **kwargs)  # the worker runs sync functions in threads
        return await result if inspect.isawaitable(result) else result

    def _authorized(self, request: Request) -> bool:
        supplied = request.headers.get("x-functions-key") or request.query_params.get("code") or ""
        return hmac.compare_digest(supplied.encode(), self.function_key.encode())

    def _log_exception(self, what: str) -> None:
        print(f"devhost: function {self.fn.name!r} {what}:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()


class _FunctionRoute(Route):
    """A route whose method mismatch is a 404 with an empty body, as on the Functions host."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            await _not_found(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await Response(status_code=404)(scope, receive, send)


def build_asgi_app(
    functions: Iterable[HttpFunction],
    route_prefix: str = DEFAULT_ROUTE_PREFIX,
    function_key: str = DEFAULT_FUNCTION_KEY,
    providers: Mapping[str, BindingProvider] | None = None,
) -> Router:
    """A Starlette router with one route per (function, path variant), most specific first."""
    providers = BINDING_PROVIDERS if providers is None else providers
    entries = []
    for fn in functions:
        endpoint = FunctionEndpoint(fn, function_key, providers)
        for path, precedence in translate_route(fn.route, route_prefix):
            route = _FunctionRoute(path, endpoint, methods=fn.methods, name=fn.name)
            entries.append((precedence, route))
    entries.sort(key=lambda entry: entry[0])  # stable: equal precedence keeps registration order
    return Router([route for _, route in entries], redirect_slashes=False, default=_not_found)


# ------------------------------------------------------------------------------------------- main

BANNER = """\
==============================================================================
 DEVELOPMENT HOST - for local development and tests only, NOT a production host.
 It serves the HTTP functions of {app} through uvicorn, like `func start`.
 Function key (FUNCTION/ADMIN routes, header x-functions-key or ?code=): {key}
=============================================================================="""


def _bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, made as `loop.create_server` makes it: with `proto=IPPROTO_TCP`.

    uvicorn's `Config.bind_socket` leaves the protocol 0, so asyncio does not recognise the accepted connections
    as TCP and never sets TCP_NODELAY on them: every answer after a connection's first then waited ~40 ms
    (Nagle against the client's delayed ACK), and the benchmark measured that instead of the gateway.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Development host for the HTTP functions of a Functions app.")
    parser.add_argument("--port", type=int, required=True, help="0: any free port (printed once bound)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--app", default="function_app", help="module holding the app (default function_app)")
    parser.add_argument(
        "--settings",
        default="local.settings.json",
        help="settings file, relative to --cwd (default local.settings.json)",
    )
    parser.add_argument("--no-settings", action="store_true", help="do not read a settings file")
    parser.add_argument("--cwd", default=None, help="directory to run in and import the app from")
    args = parser.parse_args(argv)

    if args.cwd:
        os.chdir(args.cwd)
    cwd = Path.cwd()
    if str(cwd) not in sys.path:
        sys.path.insert(0, str(cwd))

    settings = {} if args.no_settings else read_settings(cwd / args.settings)
    applied = apply_settings(settings, os.environ)  # before importing the app: it may read settings
    function_key = os.environ.get(FUNCTION_KEY_SETTING) or DEFAULT_FUNCTION_KEY
    print(BANNER.format(app=args.app, key=function_key), flush=True)
    if settings:
        print(
            f"Settings: {len(applied)} of {len(settings)} value(s) from {args.settings} "
            "(the environment wins for the others)",
            flush=True,
        )

    module = importlib.import_module(args.app)
    app = getattr(module, "app", None)
    if app is None or not hasattr(app, "get_functions"):
        print(f"devhost: module {args.app!r} has no Functions app named 'app'", file=sys.stderr)
        return 2
    app_dir = Path(module.__file__ or cwd).parent
    from tests.support.durable_standin import DurableStandIn  # the Durable extension's stand-in

    durable = DurableStandIn.from_app(app, system_key=function_key, app_dir=app_dir)
    durable.register(BINDING_PROVIDERS)  # provides the durableClient binding
    print(durable.banner(), flush=True)
    functions, skipped = discover_http_functions(app)
    for message in skipped:
        warn(message)
    route_prefix = read_route_prefix(app_dir)
    asgi_app = durable.wrap(build_asgi_app(functions, route_prefix, function_key))

    import uvicorn

    config = uvicorn.Config(
        asgi_app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    sock = _bind_socket(args.host, args.port)  # bound here (not yet listening): a port 0 is known before serving
    origin = f"http://{args.host}:{sock.getsockname()[1]}"
    base_url = f"{origin}/" + (f"{route_prefix}/" if route_prefix else "")
    for fn in functions:
        methods = ",".join(fn.methods) if fn.methods else "*"
        print(f"  {fn.name} [{methods}, {fn.auth_level.lower()}] {base_url}{fn.route.strip('/')}", flush=True)
    print(f"{LISTENING} {origin}", flush=True)

    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal with the handler that
    # was installed before: make that a clean exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.run(sockets=[sock])  # uvicorn listens on it, and closes it on shutdown
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


# ---------------------------------------------------------------------------------- test helper


class DevHost(ChildProcess):
    """Runs the development host in a child process (own process group) for tests and benchmarks.

    with DevHost({"GATEWAY_BACKEND_1": "..."}) as host:
        httpx.get(host.url + "/health")
    """

    what = "development host"

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        settings_file: str | os.PathLike[str] | None = None,
        app: str = "function_app",
        cwd: str | os.PathLike[str] = REPO_ROOT,
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """``settings_file=None`` reads no settings file (tests stay independent of a developer's
        local.settings.json); pass a path (absolute, or relative to ``cwd``) to read one."""
        self.env = dict(env or {})
        self.settings_file = settings_file
        self.app = app
        self.cwd = Path(cwd)
        self.port = port  # None: chosen by the OS on the first start, then kept
        self.host = host
        super().__init__()

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the development host's port is chosen when it first starts: start it first")
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def log(self) -> str:
        """Everything the host printed so far (stdout and stderr)."""
        return log_tail(self._log_path, max_chars=1_000_000) if self._log_path else ""

    def start(self) -> Self:
        command = [
            sys.executable,
            "-m",
            "tests.support.devhost",
            "--port",
            str(self.port or 0),
            "--host",
            self.host,
            "--app",
            self.app,
            "--cwd",
            str(self.cwd),
        ]
        command += ["--settings", str(self.settings_file)] if self.settings_file else ["--no-settings"]
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        [self.port] = self._launch(command, host=self.host, ports=_reported_port, env=env, cwd=REPO_ROOT)
        return self


def _reported_port(output: str) -> list[int] | None:
    """The port from the host's ``LISTENING`` line (None until it is printed)."""
    found = _LISTENING_PORT.search(output)
    return None if found is None else [int(found[1])]


if __name__ == "__main__":
    sys.exit(main())
