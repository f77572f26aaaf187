"""The loopback AMQP broker works with the real, unmodified azure-servicebus client.

Later tests trust ``AmqpBroker.messages()`` to show exactly what the gateway published,
so these tests send through the SDK and check every field on both sides.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from azure.servicebus import ServiceBusClient as SyncServiceBusClient
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusReceiveMode
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.amqp import AmqpAnnotatedMessage
from azure.servicebus.exceptions import ServiceBusConnectionError, ServiceBusError, ServiceBusQuotaExceededError

from tests.support.amqp_broker import QUOTA_EXCEEDED, AmqpBroker, ReceivedMessage
from tests.support.ports import closed_port, port_is_open

APPLICATION_PROPERTIES = {"deployment": "gpt-4o", "total_tokens": 42}


@pytest.fixture(scope="module")
def broker() -> Iterator[AmqpBroker]:
    with AmqpBroker() as running:
        yield running


def unique(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:8]


def full_message(body: bytes = b'{"ok": true}') -> ServiceBusMessage:
    return ServiceBusMessage(
        body,
        message_id=unique("msg-"),
        correlation_id=unique("corr-"),
        subject="chat.completion",
        content_type="application/json",
        application_properties=APPLICATION_PROPERTIES,
    )


async def receive_exactly(
    receiver: ServiceBusReceiver, count: int, timeout_s: float = 10
) -> list[ServiceBusReceivedMessage]:
    """receive_messages() may return fewer than asked for; keep asking until the deadline."""
    deadline = time.monotonic() + timeout_s
    received: list[ServiceBusReceivedMessage] = []
    while len(received) < count and time.monotonic() < deadline:
        remaining = max(deadline - time.monotonic(), 0.1)
        received += await receiver.receive_messages(max_message_count=count - len(received), max_wait_time=remaining)
    assert len(received) == count, f"received {len(received)} of {count} messages"
    return received


def assert_arrived_as_sent(arrived: ReceivedMessage, sent: ServiceBusMessage) -> None:
    assert arrived == ReceivedMessage(
        body=b"".join(sent.body),
        message_id=sent.message_id,
        correlation_id=sent.correlation_id,
        subject="chat.completion",
        content_type="application/json",
        application_properties=APPLICATION_PROPERTIES,
    )


def test_connection_string_is_emulator_style(broker: AmqpBroker) -> None:
    assert broker.connection_string == (
        f"Endpoint=sb://127.0.0.1:{broker.port};SharedAccessKeyName=RootManageSharedAccessKey;"
        "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true"
    )


@pytest.mark.parametrize("kind", ["queue", "topic"])
async def test_single_message_keeps_every_field(broker: AmqpBroker, kind: str) -> None:
    entity = unique(kind)
    sent = full_message()
    async with ServiceBusClient.from_connection_string(broker.connection_string) as client:
        sender = client.get_queue_sender(entity) if kind == "queue" else client.get_topic_sender(entity)
        async with sender:
            await sender.send_messages(sent)

    [arrived] = broker.wait_for(entity, 1, timeout_s=10)
    assert_arrived_as_sent(arrived, sent)
    assert broker.messages(entity) == [arrived]
    assert broker.messages(unique("other")) == []


async def test_batch_is_unpacked(broker: AmqpBroker) -> None:
    queue = unique("batch")
    async with ServiceBusClient.from_connection_string(broker.connection_string) as client:
        async with client.get_queue_sender(queue) as sender:
            batch = await sender.create_message_batch()
            for i in range(3):
                batch.add_message(ServiceBusMessage(f"item {i}", application_properties={"index": i}))
            await sender.send_messages(batch)

    arrived = broker.wait_for(queue, 3, timeout_s=10)
    assert [m.body for m in arrived] == [b"item 0", b"item 1", b"item 2"]
    assert [m.application_properties for m in arrived] == [{"index": 0}, {"index": 1}, {"index": 2}]
    assert len({m.message_id for m in arrived}) == 3  # the SDK gives each batched message its own id


async def test_receive_and_complete_from_queue(broker: AmqpBroker) -> None:
    queue = unique("rx")
    sent = full_message(b'{"answer": 42}')
    async with ServiceBusClient.from_connection_string(broker.connection_string) as client:
        async with client.get_queue_sender(queue) as sender:
            await sender.send_messages(sent)
        async with client.get_queue_receiver(queue) as receiver:
            [received] = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
            await receiver.complete_message(received)

        assert b"".join(received.body) == b'{"answer": 42}'
        assert received.message_id == sent.message_id
        assert received.correlation_id == sent.correlation_id
        assert received.subject == "chat.completion"
        assert received.content_type == "application/json"
        # The SDK hands application property keys (and str values) back as bytes, as with Azure.
        assert received.application_properties == {b"deployment": b"gpt-4o", b"total_tokens": 42}

        # Completed means gone: a new receiver finds nothing (the broker still remembers it arrived).
        async with client.get_queue_receiver(queue) as receiver:
            assert await receiver.receive_messages(max_message_count=1, max_wait_time=1) == []
    assert len(broker.messages(queue)) == 1


async def test_abandoned_message_is_delivered_again(broker: AmqpBroker) -> None:
    queue = unique("abandon")
    async with ServiceBusClient.from_connection_string(broker.connection_string) as client:
        async with client.get_queue_sender(queue) as sender:
            await sender.send_messages(ServiceBusMessage("again"))
        async with client.get_queue_receiver(queue) as receiver:
            [first] = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
            await receiver.abandon_message(first)
            [second] = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
            await receiver.complete_message(second)
    assert b"".join(second.body) == b"again"


async def test_receive_from_topic_subscription(broker: AmqpBroker) -> None:
    topic = unique("topic")
    async with ServiceBusClient.from_connection_string(broker.connection_string) as client:
        async with client.get_topic_sender(topic) as sender:
            await sender.send_messages(ServiceBusMessage("to subscribers"))
        async with client.get_subscription_receiver(topic, "default") as receiver:
            [received] = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
            await receiver.complete_message(received)
    assert b"".join(received.body) == b"to subscribers"


def test_sync_client_sends_and_receives(broker: AmqpBroker) -> None:
    queue = unique("sync")
    sent = full_message()
    with SyncServiceBusClient.from_connection_string(broker.connection_string) as client:
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(sent)
        with client.get_queue_receiver(queue) as receiver:
            [received] = receiver.receive_messages(max_message_count=1, max_wait_time=10)
            receiver.complete_message(received)
    assert_arrived_as_sent(broker.messages(queue)[0], sent)
    assert received.message_id == sent.message_id


async def test_wrong_port_fails_fast(broker: AmqpBroker) -> None:
    with closed_port() as port:
        wrong = broker.connection_string.replace(f":{broker.port};", f":{port};")
        started = time.monotonic()
        async with ServiceBusClient.from_connection_string(wrong, retry_total=0) as client:
            with pytest.raises(ServiceBusConnectionError, match="Connect call failed"):
                async with client.get_queue_sender("nowhere") as sender:  # opening the link connects
                    await sender.send_messages(ServiceBusMessage("lost"))
    assert time.monotonic() - started < 10


def test_wait_for_times_out_naming_the_address(broker: AmqpBroker) -> None:
    with pytest.raises(TimeoutError, match="0 of 1 messages arrived at 'empty'"):
        broker.wait_for("empty", 1, timeout_s=0.2)


async def test_stop_closes_everything_even_with_a_client_still_connected() -> None:
    fds_before = set(os.listdir("/proc/self/fd"))
    broker = AmqpBroker().start()
    thread_name = f"amqp-broker-{broker.port}"
    assert thread_name in [t.name for t in threading.enumerate()]
    client = ServiceBusClient.from_connection_string(broker.connection_string)
    sender = client.get_queue_sender("left-open")
    await sender.send_messages(ServiceBusMessage("hi"))
    try:
        broker.stop()  # the client has not closed its connection
        assert not port_is_open("127.0.0.1", broker.port)
    finally:
        await client.close()
    assert thread_name not in [t.name for t in threading.enumerate()]
    assert set(os.listdir("/proc/self/fd")) <= fds_before


async def test_unsettled_message_is_delivered_again_after_its_receiver_closes(broker: AmqpBroker) -> None:
    queue = unique("unsettled")
    async with ServiceBusClient.from_connection_string(broker.connection_string) as client:
        async with client.get_queue_sender(queue) as sender:
            await sender.send_messages([ServiceBusMessage("first"), ServiceBusMessage("second")])
        async with client.get_queue_receiver(queue) as receiver:
            [taken] = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
        assert b"".join(taken.body) == b"first"  # closed without completing it
        async with client.get_queue_receiver(queue) as receiver:
            received = await receive_exactly(receiver, 2)
            for message in received:
                await receiver.complete_message(message)
    assert [b"".join(m.body) for m in received] == [b"first", b"second"]


async def test_receive_and_delete(broker: AmqpBroker) -> None:
    queue = unique("rad")
    async with ServiceBusClient.from_connection_string(broker.connection_string) as client:
        async with client.get_queue_sender(queue) as sender:
            await sender.send_messages(ServiceBusMessage("once"))
        async with client.get_queue_receiver(queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
            [received] = await receiver.receive_messages(max_message_count=1, max_wait_time=10)
        async with client.get_queue_receiver(queue) as receiver:
            assert await receiver.receive_messages(max_message_count=1, max_wait_time=1) == []
    assert b"".join(received.body) == b"once"


async def test_management_requests_get_a_clear_error(broker: AmqpBroker) -> None:
    async with ServiceBusClient.from_connection_string(broker.connection_string, retry_total=0) as client:
        async with client.get_queue_receiver(unique("peek")) as receiver:
            with pytest.raises(ServiceBusError, match="not implemented by the test AMQP broker"):
                await receiver.peek_messages(1)


async def test_a_message_the_broker_cannot_record_fails_the_send_clearly(broker: AmqpBroker) -> None:
    queue = unique("odd")
    async with ServiceBusClient.from_connection_string(broker.connection_string, retry_total=0) as client:
        async with client.get_queue_sender(queue) as sender:
            with pytest.raises(ServiceBusError, match="amqp-value body of type dict is not supported"):
                await sender.send_messages(AmqpAnnotatedMessage(value_body={"not": "bytes"}))
            await sender.send_messages(AmqpAnnotatedMessage(value_body="a str value body"))  # still running
    [arrived] = broker.wait_for(queue, 1)
    assert arrived.body == b"a str value body"


async def test_refused_sends_fail_as_a_transient_error_and_are_not_kept() -> None:
    with AmqpBroker(refuse_sends=0.5, seed=11) as broker:
        sent, failed = [], 0
        async with ServiceBusClient.from_connection_string(broker.connection_string, retry_total=0) as client:
            async with client.get_queue_sender("flaky") as sender:
                for number in range(8):
                    try:
                        await sender.send_messages(ServiceBusMessage(b"x", message_id=f"m{number}"))
                    except ServiceBusError as exc:
                        assert "refused by fault injection" in str(exc)
                        failed += 1
                    else:
                        sent.append(f"m{number}")
        assert 0 < failed < 8 and broker.refused == failed
        assert [m.message_id for m in broker.messages("flaky")] == sent


async def test_a_refusal_the_sdk_does_not_retry_reaches_the_sender_at_once() -> None:
    """With its default retry policy the client hands a quota-exceeded refusal straight to its caller (one try),
    and the next send on the same sender goes through."""
    with AmqpBroker(refuse_sends=0.5, seed=3, refuse_condition=QUOTA_EXCEEDED) as broker:
        failed: list[str] = []
        async with ServiceBusClient.from_connection_string(broker.connection_string) as client:
            async with client.get_queue_sender("full") as sender:
                for number in range(8):
                    try:
                        await sender.send_messages(ServiceBusMessage(b"x", message_id=f"m{number}"))
                    except ServiceBusQuotaExceededError:
                        failed.append(f"m{number}")
        assert failed and broker.refused == len(failed) and broker.refused_ids == failed  # one try each
        assert [m.message_id for m in broker.messages("full")] == [f"m{n}" for n in range(8) if f"m{n}" not in failed]


async def test_a_stopped_broker_comes_back_on_its_port_with_its_record() -> None:
    broker = AmqpBroker().start()
    try:
        async with ServiceBusClient.from_connection_string(broker.connection_string) as client:
            async with client.get_queue_sender("outage") as sender:
                await sender.send_messages(ServiceBusMessage(b"before", message_id="before"))
        broker.stop()
        assert not port_is_open("127.0.0.1", broker.port)
        broker.start()
        async with ServiceBusClient.from_connection_string(broker.connection_string) as client:
            async with client.get_queue_sender("outage") as sender:
                await sender.send_messages(ServiceBusMessage(b"after", message_id="after"))
        assert [m.message_id for m in broker.messages("outage")] == ["before", "after"]
    finally:
        broker.stop()
