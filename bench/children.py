"""Starting the benchmark's servers: each binds port 0 and the benchmark learns the port it got.

No port is picked by one process and bound by another (a port released and bound again can be taken in between
by anything on the machine). Our own servers print one line per socket once it is bound,
`<label> listening on http://HOST:PORT` (the development host's is `devhost: listening on ...`), and `reported`
reads them from the log. A server that prints nothing usable (LiteLLM at log level ERROR) is given port 0 too,
and `bound` reads the port its process group listens on from /proc.

`start` is the one way the benchmark modules (run, concurrency, mixed, profile through run) start a server: a
process-group leader, its output in a log, stopped through the given exit stack whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from bench import procstat
from tests.support.ports import log_tail, stop_process_group, wait_for_output, wait_for_port

__all__ = ["PortReader", "bound", "devhost_command", "fake_command", "reported", "start"]

# What a server prints once a socket is bound; the label says which socket (a server may bind several).
_LISTENING = re.compile(r"^(?P<label>.*?)\s*listening on https?://[^\s/]*:(?P<port>\d+)", re.M)

# Reads a starting server's ports from its output so far and its process group id; None until all are known.
type PortReader = Callable[[str, int], list[int] | None]


def reported(*labels: str) -> PortReader:
    """The ports a server printed as `<label> listening on http://HOST:PORT`, in the order of `labels`."""

    def read(output: str, pgid: int) -> list[int] | None:
        found = {m["label"]: int(m["port"]) for m in _LISTENING.finditer(output)}
        return [found[label] for label in labels] if all(label in found for label in labels) else None

    return read


def bound(output: str, pgid: int) -> list[int] | None:
    """The one TCP port the server's process group listens on (None while it listens on none)."""
    ports = procstat.listening_ports(pgid)
    if len(ports) > 1:
        raise RuntimeError(f"listens on several ports ({sorted(ports)}): cannot tell which one serves")
    return sorted(ports) or None


def fake_command(name: str, *options: str) -> list[str]:
    """The fake Azure OpenAI server (bench/fake_server.py) on port 0, its control listener too."""
    return [sys.executable, "-m", "bench.fake_server", "--port", "0", "--control-port", "0", "--name", name, *options]


FAKE_PORTS = reported("fake", "fake control")  # what fake_command's server prints: its API, then its control


def devhost_command(app: str, host: str, root: Path) -> list[str]:
    """The development host serving `app` from checkout `root`, on port 0."""
    return [sys.executable, "-m", "tests.support.devhost", "--port", "0", "--host", host, "--app", app,
            "--cwd", str(root), "--no-settings"]  # fmt: skip


DEVHOST_PORT = reported("devhost:")


def start(
    stack: contextlib.ExitStack,
    name: str,
    command: list[str],
    ports: PortReader,
    *,
    host: str,
    env: Mapping[str, str | None] | None = None,
    root: Path,
    timeout_s: float = 60.0,
    keep_log: bool = False,
) -> tuple[subprocess.Popen[bytes], list[int]]:
    """Runs `command` as a process-group leader (registered on `stack` for stopping) and returns it with its
    ports once they accept connections. `env` values of None unset a variable; `root` goes first on PYTHONPATH."""
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), full_env.get("PYTHONPATH")]))
    full_env["PYTHONUNBUFFERED"] = "1"
    with tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
        proc = subprocess.Popen(command, cwd=root, env=full_env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def stop() -> None:
        stop_process_group(proc, grace_s=5.0)
        if keep_log:
            print(f"  log of {name}: {log_path}", file=sys.stderr)
        else:
            log_path.unlink(missing_ok=True)

    stack.callback(stop)

    def alive() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}")

    try:
        found = wait_for_output(log_path, lambda output: ports(output, proc.pid), timeout_s, check=alive)
        for port in found:
            wait_for_port(host, port, timeout_s, check=alive)
    except BaseException as exc:
        raise RuntimeError(f"{name} did not start: {exc}\n--- log tail ---\n{log_tail(log_path)}") from exc
    return proc, found
