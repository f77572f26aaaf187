"""Completion messages through the real SDKs: azure-servicebus to an AMQP 1.0 test broker, and the Storage
queue fallback on Azurite. The message is read back with every property a subscriber relies on."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

import pytest
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import ServiceBusError
from azure.storage.queue.aio import QueueClient

from gateway.completions import CompletionMessage, build_publisher
from gateway.config import load_settings
from gateway.credentials import storage_credential
from gateway.storage import storage_account
from tests.support.amqp_broker import AmqpBroker

BASE = {"GATEWAY_BACKEND_1": "host=https://weu.example;deployments=gpt-4o-mini", "GATEWAY_API_KEYS": "k"}


def message() -> CompletionMessage:
    return CompletionMessage(
        id="inst-" + uuid.uuid4().hex[:8],
        request_id="req-7",
        status="succeeded",
        model="gpt-4o-mini",
        deployment="gpt-4o-mini-weu",
        backend="weu",
        caller="key:abc",
        attempts=2,
        http_status=200,
        usage={"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21, "estimated": False},
        result_url="/results/x",
        submitted_at="2026-11-25T08:00:00+00:00",
        completed_at="2026-11-25T08:00:03+00:00",
    )


async def test_service_bus_publisher_sends_through_the_real_client():
    with AmqpBroker() as broker:
        settings = load_settings(
            {**BASE, "COMPLETIONS_SERVICEBUS": broker.connection_string, "GATEWAY_COMPLETIONS_ENTITY": "completions"}
        )
        publisher = build_publisher(
            settings, storage_account({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}), storage_credential
        )
        sent = message()
        await publisher.publish(sent)
        await publisher.publish(message())  # the sender link is reused for the next one
        await publisher.close()
        first, second = broker.wait_for("completions", 2)
        assert first.message_id == sent.id and first.correlation_id == "req-7" and first.subject == "succeeded"
        assert first.content_type == "application/json"
        assert first.application_properties == {
            "status": "succeeded",
            "kind": "response",
            "model": "gpt-4o-mini",
            "deployment": "gpt-4o-mini-weu",
            "backend": "weu",
            "caller": "key:abc",
            "prompt_tokens": 9,
            "completion_tokens": 12,
            "total_tokens": 21,
        }
        body = json.loads(first.body)
        assert body["id"] == sent.id and body["usage"]["total_tokens"] == 21 and body["attempts"] == 2
        assert second.message_id != first.message_id

        # A subscriber with the real client receives it with the same properties.
        async with ServiceBusClient.from_connection_string(broker.connection_string) as client:
            async with client.get_queue_receiver("completions", max_wait_time=5) as receiver:
                received = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
                assert str(received[0].message_id) == sent.id and received[0].subject == "succeeded"
                assert json.loads(b"".join(received[0].body))["request_id"] == "req-7"
                await receiver.complete_message(received[0])


async def test_without_service_bus_the_message_goes_to_the_storage_queue(azurite):
    queue = "completions-" + uuid.uuid4().hex[:8]
    settings = load_settings({**BASE, "GATEWAY_COMPLETIONS_QUEUE": queue})
    account = storage_account({"AzureWebJobsStorage": azurite.connection_string})
    publisher = build_publisher(settings, account, storage_credential)
    sent = message()
    await publisher.publish(sent)
    await publisher.close()
    async with QueueClient.from_connection_string(azurite.connection_string, queue) as client:
        [received] = [m async for m in client.receive_messages()]
    body = json.loads(base64.b64decode(received.content))  # base64, as Functions queue triggers expect
    assert body == json.loads(sent.body())


async def test_concurrent_publishes_share_one_sender():
    """Activities publish concurrently in one worker; the SDK's sender must not be opened by two at once."""
    with AmqpBroker() as broker:
        settings = load_settings({**BASE, "COMPLETIONS_SERVICEBUS": broker.connection_string})
        publisher = build_publisher(
            settings, storage_account({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}), storage_credential
        )
        sent = [message() for _ in range(20)]
        try:
            await asyncio.gather(*(publisher.publish(m) for m in sent))
        finally:
            await publisher.close()
        arrived = broker.wait_for("completions", len(sent))
        assert sorted(m.message_id for m in arrived) == sorted(m.id for m in sent)


async def test_a_refused_send_is_handed_back_after_one_retry():
    """A message the broker keeps refusing fails the publish after the client's one retry (its default is three,
    backing off), so the sender it shares with every other completion of the process is free again soon; the
    publish activity's Durable retry and the orchestration's timer try it again later."""
    with AmqpBroker(refuse_sends=1.0) as broker:
        settings = load_settings({**BASE, "COMPLETIONS_SERVICEBUS": broker.connection_string})
        publisher = build_publisher(
            settings, storage_account({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}), storage_credential
        )
        refused = message()
        try:
            with pytest.raises(ServiceBusError):
                await publisher.publish(refused)
        finally:
            await publisher.close()
        assert broker.refused_ids == [refused.id, refused.id]  # the first try and one retry, no more
