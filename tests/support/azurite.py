"""Azurite (the Azure Storage emulator, pinned in package.json) for tests and local runs.

    with Azurite() as storage:
        TableServiceClient.from_connection_string(storage.connection_string)

Each instance listens on 127.0.0.1 with three free ports (blob, queue, table) chosen once, so
``stop()`` followed by ``start()`` brings storage back on the same ports (with empty, in-memory data).

CLI: ``python -m tests.support.azurite [--blob-port 10000 --queue-port 10001 --table-port 10002]``
runs Azurite until SIGINT/SIGTERM and prints the connection string.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.ports import free_port, log_tail, stop_process_group, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[2]
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite"

ACCOUNT_NAME = "devstoreaccount1"
# The emulator's published, well-known development key (not a secret).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0


class AzuriteError(RuntimeError):
    pass


class Azurite:
    def __init__(
        self,
        blob_port: int | None = None,
        queue_port: int | None = None,
        table_port: int | None = None,
        binary: Path = AZURITE_BIN,
    ) -> None:
        self.blob_port = blob_port or free_port(HOST)
        self.queue_port = queue_port or free_port(HOST)
        self.table_port = table_port or free_port(HOST)
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def ports(self) -> tuple[int, int, int]:
        return (self.blob_port, self.queue_port, self.table_port)

    @property
    def blob_endpoint(self) -> str:
        return f"http://{HOST}:{self.blob_port}/{ACCOUNT_NAME}"

    @property
    def queue_endpoint(self) -> str:
        return f"http://{HOST}:{self.queue_port}/{ACCOUNT_NAME}"

    @property
    def table_endpoint(self) -> str:
        return f"http://{HOST}:{self.table_port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};QueueEndpoint={self.queue_endpoint};"
            f"TableEndpoint={self.table_endpoint};"
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start Azurite and return once all three ports accept connections."""
        if self.running:
            raise AzuriteError("Azurite is already running")
        if not self.binary.exists():
            raise AzuriteError(f"{self.binary} not found: run `make deps` (npm ci) to install Azurite")
        with tempfile.NamedTemporaryFile(prefix="azurite-", suffix=".log", delete=False) as log:
            self._log_path = Path(log.name)
            self._proc = subprocess.Popen(
                [
                    str(self.binary),
                    "--inMemoryPersistence",
                    "--skipApiVersionCheck",
                    "--loose",
                    "--silent",
                    "--disableTelemetry",
                    "--blobHost", HOST, "--blobPort", str(self.blob_port),
                    "--queueHost", HOST, "--queuePort", str(self.queue_port),
                    "--tableHost", HOST, "--tablePort", str(self.table_port),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() kills node and anything it spawned
                cwd=tempfile.gettempdir(),  # in-memory, but keep any stray files out of the repo
            )
        try:
            for port in self.ports:
                wait_for_port(HOST, port, START_TIMEOUT_S, check=self._check_alive)
        except BaseException as exc:
            tail = self._log_tail()
            self.stop()
            raise AzuriteError(f"Azurite did not start: {exc}\n--- azurite log tail ---\n{tail}") from exc
        return self

    def stop(self) -> None:
        """Kill Azurite's process group and wait for it. Safe to call twice."""
        if self._proc is not None:
            stop_process_group(self._proc, grace_s=5.0)
            self._proc = None
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise AzuriteError(f"Azurite exited with code {self._proc.returncode}")

    def _log_tail(self) -> str:
        return log_tail(self._log_path) if self._log_path else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run Azurite (in memory) until SIGINT/SIGTERM.")
    parser.add_argument("--blob-port", type=int, default=10000)
    parser.add_argument("--queue-port", type=int, default=10001)
    parser.add_argument("--table-port", type=int, default=10002)
    args = parser.parse_args(argv)

    azurite = Azurite(args.blob_port, args.queue_port, args.table_port)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    try:
        azurite.start()
        # Block the signals *after* starting Azurite (children inherit the mask), then wait for one
        # of them, or for Azurite itself to exit (SIGCHLD).
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals | {signal.SIGCHLD})
        print(f"Azurite is running (blob {azurite.blob_port}, queue {azurite.queue_port}, "
              f"table {azurite.table_port}). Connection string:", flush=True)
        print(azurite.connection_string, flush=True)
        while azurite.running:
            if signal.sigwait(stop_signals | {signal.SIGCHLD}) in stop_signals:
                break
        else:
            print("Azurite exited on its own", file=sys.stderr)
            return 1
        return 0
    except AzuriteError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        azurite.stop()


if __name__ == "__main__":
    sys.exit(main())
