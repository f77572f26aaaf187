"""In-flight answers per backend (the operator view's count): up while an answer is awaited or read, down after."""

from __future__ import annotations

import json

from gateway.bootstrap import build_services
from gateway.config import load_settings
from gateway.operations import backends_view
from gateway.pipeline import Inbound
from tests.support.fake_openai import FakeAzureOpenAI, Fault

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


async def test_in_flight_counts_an_answer_until_it_is_read_and_never_a_failed_attempt():
    async with FakeAzureOpenAI(name="weu") as weu, FakeAzureOpenAI(name="neu") as neu:
        services = build_services(
            load_settings(
                {
                    "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};mode=direct;api-key=fake-key;priority=1",
                    "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};mode=direct;api-key=fake-key;priority=2",
                    "GATEWAY_AUTH": "none",
                }
            )
        )
        try:
            weu.enqueue(Fault.status(429, retry_after=30))
            hold = neu.hold_stream(after_chunks=2)
            body = json.dumps({**CHAT, "stream": True}).encode()
            out = await services.pipeline.handle(Inbound("POST", "/v1/chat/completions", "", {}, body))
            stream = out.stream
            assert stream is not None
            first = await anext(stream)
            assert first and await hold.wait_reached()
            view = {
                b["config"]["name"]: b["in_flight"]
                for b in backends_view(services.pool, services.attempts.in_flight)["backends"]
            }
            assert view == {"weu": 0, "neu": 1}  # the 429 is not in flight; the held stream is
            hold.release()
            async for _ in stream:
                pass
            assert services.attempts.in_flight == {"weu": 0, "neu": 0}
        finally:
            await services.close()
