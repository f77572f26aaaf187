"""`make run`: the gateway locally with what it needs, stopped together on Ctrl-C.

Starts Azurite on the default ports (AzureWebJobsStorage=UseDevelopmentStorage=true), the FAKE Azure OpenAI
server when local.settings.json still points a backend at it, then `func start` when Azure Functions Core
Tools are installed, otherwise the development host (tests/support/devhost.py), saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.ports import stop_process_group, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--fake-port", type=int, default=18080)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops everything, like Ctrl-C

    values = json.loads((ROOT / "local.settings.json").read_text())["Values"]
    env = {**values, **os.environ}  # a variable already set in the environment wins, as with Core Tools
    children: list[subprocess.Popen] = []

    def spawn(*cmd: str) -> None:
        children.append(subprocess.Popen(cmd, cwd=ROOT, start_new_session=True))

    try:
        if env.get("AzureWebJobsStorage", "").startswith("UseDevelopmentStorage=true") and not _listening(10000):
            spawn(
                sys.executable,
                "-m",
                "tests.support.azurite",
                "--blob-port",
                "10000",
                "--queue-port",
                "10001",
                "--table-port",
                "10002",
            )
            for port in (10000, 10001, 10002):
                wait_for_port("127.0.0.1", port, 30)
        fake = f"127.0.0.1:{args.fake_port}"
        if any(k.startswith("GATEWAY_BACKEND_") and fake in v for k, v in env.items()) and not _listening(
            args.fake_port
        ):
            print(
                f"*** Starting the FAKE Azure OpenAI server on {fake} (local.settings.json points a backend at it;"
                " replace GATEWAY_BACKEND_1 with a real endpoint to use Azure). ***",
                flush=True,
            )
            spawn(
                sys.executable, "-m", "tests.support.fake_openai", "--port", str(args.fake_port), "--name", "local-fake"
            )
            wait_for_port("127.0.0.1", args.fake_port, 30)
        if shutil.which("func"):
            cmd = ["func", "start", "--port", str(args.port)]
        else:
            print(
                "*** Azure Functions Core Tools not found: serving the app with the development host"
                " (tests/support/devhost.py). It is not a production host. ***",
                flush=True,
            )
            cmd = [sys.executable, "-m", "tests.support.devhost", "--port", str(args.port)]
        key = values.get("GATEWAY_API_KEYS", "").split(",")[0].rpartition(":")[2] or "<your key>"
        print(
            f"Try: curl -s http://127.0.0.1:{args.port}/v1/chat/completions -H 'api-key: {key}' "
            "-H 'content-type: application/json' "
            '-d \'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}\'',
            flush=True,
        )
        return subprocess.call(cmd, cwd=ROOT)
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            stop_process_group(child)


if __name__ == "__main__":
    sys.exit(main())
