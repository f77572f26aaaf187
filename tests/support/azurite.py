"""Azurite (the Azure Storage emulator, pinned in package.json) for tests and local runs.

    with Azurite() as storage:
        TableServiceClient.from_connection_string(storage.connection_string)

Each instance listens on 127.0.0.1 with three free ports (blob, queue, table) chosen once, so
``stop()`` followed by ``start()`` brings storage back on the same ports: with empty, in-memory data, or,
with ``location=DIR``, with the data it held (an outage, not a new account).

CLI: ``python -m tests.support.azurite [--blob-port 10000 --queue-port 10001 --table-port 10002]``
runs Azurite until SIGINT/SIGTERM and prints the connection string.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path
from typing import Self

from tests.support.ports import ChildProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite"

ACCOUNT_NAME = "devstoreaccount1"
# The emulator's published, well-known development key (not a secret).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0


class AzuriteError(RuntimeError):
    pass


class Azurite(ChildProcess):
    what = "Azurite"
    error = AzuriteError
    grace_s = 5.0
    start_timeout_s = START_TIMEOUT_S

    def __init__(
        self,
        blob_port: int | None = None,
        queue_port: int | None = None,
        table_port: int | None = None,
        binary: Path = AZURITE_BIN,
        location: Path | None = None,
    ) -> None:
        """``location``: keep the data in that directory (it survives ``stop()``/``start()``); else in memory."""
        self.blob_port = blob_port or free_port(HOST)
        self.queue_port = queue_port or free_port(HOST)
        self.table_port = table_port or free_port(HOST)
        self.binary = binary
        self.location = location
        super().__init__()

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

    def start(self) -> Self:
        """Start Azurite and return once all three ports accept connections."""
        if self.running:
            raise AzuriteError("Azurite is already running")
        if not self.binary.exists():
            raise AzuriteError(f"{self.binary} not found: run `make deps` (npm ci) to install Azurite")
        self._launch(
            [
                str(self.binary),
                *(["--location", str(self.location)] if self.location else ["--inMemoryPersistence"]),
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
                "--disableTelemetry",
                "--blobHost", HOST, "--blobPort", str(self.blob_port),
                "--queueHost", HOST, "--queuePort", str(self.queue_port),
                "--tableHost", HOST, "--tablePort", str(self.table_port),
            ],
            host=HOST,
            ports=self.ports,
            cwd=self.location or tempfile.gettempdir(),  # keep any stray files out of the repo
        )  # fmt: skip
        return self


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
        print(
            f"Azurite is running (blob {azurite.blob_port}, queue {azurite.queue_port}, "
            f"table {azurite.table_port}). Connection string:",
            flush=True,
        )
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
