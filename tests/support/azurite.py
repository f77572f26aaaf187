"""Azurite (the Azure Storage emulator, pinned in package.json) for tests and local runs.

    with Azurite() as storage:
        TableServiceClient.from_connection_string(storage.connection_string)

Each instance listens on 127.0.0.1 on three ports (blob, queue, table). Unless given, they are chosen once,
by the OS on the first start (Azurite binds port 0 and prints the port it got; the ports and the connection
string are known once started), so ``stop()`` followed by ``start()`` brings storage back on the same ports:
with empty, in-memory data, or, with ``location=DIR``, with the data it held (an outage, not a new account).

CLI: ``python -m tests.support.azurite [--blob-port 10000 --queue-port 10001 --table-port 10002]``
runs Azurite until SIGINT/SIGTERM and prints the connection string.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import tempfile
from pathlib import Path
from typing import Self

from tests.support.ports import ChildProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite"

ACCOUNT_NAME = "devstoreaccount1"
# The emulator's published, well-known development key (not a secret).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
# What Azurite prints once a service listens, e.g. "Azurite Blob service is successfully listening at http://..."
_LISTENING = re.compile(r"^Azurite (Blob|Queue|Table) service is successfully listening at \S+:(\d+)$", re.MULTILINE)


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
        # None: chosen by the OS on the first start, then kept.
        self.blob_port = blob_port
        self.queue_port = queue_port
        self.table_port = table_port
        self.binary = binary
        self.location = location
        super().__init__()

    @property
    def ports(self) -> tuple[int, int, int]:
        if self.blob_port is None or self.queue_port is None or self.table_port is None:
            raise AzuriteError("Azurite's ports are chosen when it first starts: start it first")
        return (self.blob_port, self.queue_port, self.table_port)

    @property
    def blob_endpoint(self) -> str:
        return f"http://{HOST}:{self.ports[0]}/{ACCOUNT_NAME}"

    @property
    def queue_endpoint(self) -> str:
        return f"http://{HOST}:{self.ports[1]}/{ACCOUNT_NAME}"

    @property
    def table_endpoint(self) -> str:
        return f"http://{HOST}:{self.ports[2]}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};QueueEndpoint={self.queue_endpoint};"
            f"TableEndpoint={self.table_endpoint};"
        )

    def start(self) -> Self:
        """Start Azurite and return once all three ports accept connections (the first start learns them)."""
        if self.running:
            raise AzuriteError("Azurite is already running")
        if not self.binary.exists():
            raise AzuriteError(f"{self.binary} not found: run `make deps` (npm ci) to install Azurite")
        ports = self._launch(
            [
                str(self.binary),
                *(["--location", str(self.location)] if self.location else ["--inMemoryPersistence"]),
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
                "--disableTelemetry",
                "--blobHost", HOST, "--blobPort", str(self.blob_port or 0),
                "--queueHost", HOST, "--queuePort", str(self.queue_port or 0),
                "--tableHost", HOST, "--tablePort", str(self.table_port or 0),
            ],
            host=HOST,
            ports=_reported_ports,
            cwd=self.location or tempfile.gettempdir(),  # keep any stray files out of the repo
        )  # fmt: skip
        self.blob_port, self.queue_port, self.table_port = ports
        return self


def _reported_ports(output: str) -> tuple[int, int, int] | None:
    """(blob, queue, table) ports from Azurite's start-up lines; None until all three services listen."""
    listening = {service: int(port) for service, port in _LISTENING.findall(output)}
    if len(listening) < 3:
        return None
    return (listening["Blob"], listening["Queue"], listening["Table"])


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
