"""Helpers for tests that run servers in child processes.

Ports: servers here bind port 0 and report the port the OS gave them (in-process servers read it from their
socket, children print it: see `ChildProcess`), so no port is ever picked by one process and bound by another.
`closed_port()` gives a port that refuses connections; `wait_for_port()` waits until one accepts them.
Processes: stop a child's whole process group, read the tail of its log, and `ChildProcess`, the lifecycle
Azurite and the development host share (start, learn the ports, wait for them, stop, never leak).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self


@contextmanager
def closed_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port on ``host`` that refuses TCP connections for as long as the block lasts.

    It stays bound (without listening), so nobody else can start listening on it meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        yield sock.getsockname()[1]


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


def wait_for_output[T](
    path: Path | str,
    parse: Callable[[str], T | None],
    timeout_s: float,
    *,
    check: Callable[[], None] | None = None,
    interval_s: float = 0.05,
) -> T:
    """Poll a child's log until ``parse(text)`` finds what it looks for (not None), and return that.

    How a child reports the port it bound. ``check`` is as for `wait_for_port`.
    Raises ``TimeoutError`` naming the file when the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check is not None:
            check()
        found = parse(read_log(path))
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{path} did not report what was expected within {timeout_s:g} s")
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


def read_log(path: Path | str) -> str:
    """The whole text of a log file ("" if it cannot be read)."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def log_tail(path: Path | str, max_chars: int = 4000) -> str:
    """The last ``max_chars`` characters of a log file ("" if it cannot be read)."""
    return read_log(path)[-max_chars:]


class ChildProcess:
    """A server in its own process group, its output in a temporary log, ready once its ports accept
    connections; `stop()` ends the whole group and removes the log. Subclasses say what they run, and on
    which ports: fixed ones, or (better) port 0 and a parser that reads the ports the child reports."""

    what = "process"  # in error messages and the log file's name
    error: type[Exception] = RuntimeError
    grace_s = 10.0
    start_timeout_s = 60.0

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id (its memory can be read from /proc/PID/status)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _launch(
        self,
        command: Sequence[str],
        *,
        host: str,
        ports: Sequence[int] | Callable[[str], Sequence[int] | None],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> list[int]:
        """Run ``command`` and return its ports once they all accept connections.

        ``ports`` are the ports it was told to listen on, or a function that reads them from its output so far
        (None until it has reported them all)."""
        if self._proc is not None:
            raise self.error(f"{self.what} already started")
        with tempfile.NamedTemporaryFile(prefix=f"{self.what.split()[-1]}-", suffix=".log", delete=False) as log:
            self._log_path = Path(log.name)
            self._proc = subprocess.Popen(
                list(command),
                cwd=cwd,
                env=None if env is None else dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout_s
        try:
            if callable(ports):
                ports = wait_for_output(self._log_path, ports, self.start_timeout_s, check=self._check_alive)
            for port in ports:
                remaining = max(0.0, deadline - time.monotonic())
                wait_for_port(host, port, remaining, check=self._check_alive)
        except BaseException as exc:
            tail = log_tail(self._log_path)
            self.stop()
            raise self.error(f"{self.what} did not start: {exc}\n--- {self.what} log tail ---\n{tail}") from exc
        return list(ports)

    def stop(self) -> None:
        """SIGTERM the group, wait, SIGKILL what is left; remove the log. Safe to call twice."""
        if self._proc is not None:
            stop_process_group(self._proc, grace_s=self.grace_s)
            self._proc = None
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise self.error(f"{self.what} exited with code {self._proc.returncode}")

    def start(self) -> Self:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
