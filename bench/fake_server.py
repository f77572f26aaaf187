"""The fake Azure OpenAI server in its own process, for the benchmark.

    python -m bench.fake_server [--port 0] [--control-port 0] [--chunks 50] [--latency-ms 0] [--chunk-delay-ms 0]

It is `tests.support.fake_openai.FakeAzureOpenAI` unchanged, plus a small control listener on another port so
the benchmark can switch the simulated latency between runs without restarting anything that points at it
(with port 0, the default, the OS picks each port and the server prints `fake listening on URL` and
`fake control listening on URL` once bound: bench/children.py reads them):

    POST /latency?ms=50   set the latency of every following request
    POST /clear           forget recorded requests

The fake records every request it answers (tests assert on them); here the list is cleared every second so a
long run does not grow the process. Its reply is made longer than the test fake's (37 characters) so that a
stream really carries `--chunks` content events (the fake never splits a reply finer than one character); past
the reply's own length it is repeated. `--chunk-delay-ms` paces every stream (the `stream-concurrency`
workload holds hundreds of streams open this way, as an LLM's token rate does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from aiohttp import web

from tests.support.fake_openai import FakeAzureOpenAI
from tests.support.local_server import serve_app

REPLY = (
    "Hello from the benchmark fake. This reply is long enough to be split into fifty streamed pieces, "
    "about as long as a short answer from a real model: a few sentences, a few hundred characters."
)


class BenchFake(FakeAzureOpenAI):
    def reply_text(self) -> str:
        if self.chunks <= len(REPLY):
            return REPLY
        return (REPLY + " ") * (self.chunks // (len(REPLY) + 1) + 1)


async def serve(args: argparse.Namespace) -> None:
    fake = BenchFake(
        name=args.name, deployments=None, latency_ms=args.latency_ms, chunks=args.chunks,
        chunk_delay_ms=args.chunk_delay_ms, host=args.host, port=args.port,
    )

    async def set_latency(request: web.Request) -> web.Response:
        fake.latency_ms = int(request.query.get("ms", "0"))
        return web.json_response({"latency_ms": fake.latency_ms})

    async def clear(_: web.Request) -> web.Response:
        fake.clear()
        return web.json_response({"cleared": True})

    control = web.Application()
    control.router.add_post("/latency", set_latency)
    control.router.add_post("/clear", clear)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fake:
        runner, control_port = await serve_app(control, host=args.host, port=args.control_port)
        print(f"fake listening on {fake.url}", flush=True)
        print(f"fake control listening on http://{args.host}:{control_port}", flush=True)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                fake.clear()  # bounded memory: nobody reads the recorded requests here
        finally:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed once bound)")
    parser.add_argument("--control-port", type=int, default=0, help="0: any free port (printed once bound)")
    parser.add_argument("--name", default="bench-fake")
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--chunk-delay-ms", type=int, default=0, help="pause before every SSE event but the first")
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
