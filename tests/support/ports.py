"""Helpers for tests that run servers in child processes.

TCP: pick a free port, wait until something listens on one.
Processes: stop a child's whole process group, read the tail of its log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str,
    port: int,
    timeout_s: float,
    *,
    check: Callable[[], None] | None = None,
    interval_s: float = 0.05,
) -> None:
    """Poll until something accepts TCP connections on ``host:port``.

    ``check`` is called before every attempt; it may raise to stop waiting early
    (for example when the process that should open the port has exited).
    Raises ``TimeoutError`` naming the address when the deadline passes.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if check is not None:
            check()
        if port_is_open(host, port):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing accepted TCP connections on {host}:{port} within {timeout_s:g} s")
        time.sleep(interval_s)


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``proc`` (started with ``start_new_session=True``),
    wait up to ``grace_s``, then SIGKILL the group. Leaves nothing running."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    # Whatever is left in the group (grandchildren, or a leader that ignored SIGTERM) gets SIGKILL.
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def log_tail(path: Path | str, max_chars: int = 4000) -> str:
    """The last ``max_chars`` characters of a log file ("" if it cannot be read)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text[-max_chars:]
