"""A small AMQP 1.0 broker on loopback that the real ``azure-servicebus`` client can use.

There is no Service Bus (and no Docker) in the test environment. With
``UseDevelopmentEmulator=true`` in the connection string the SDK (7.15) connects with
plain AMQP, no TLS and no SASL layer, to the host *and port* of ``Endpoint``
(``sb://127.0.0.1:PORT``: the emulator flag keeps the port), so a python-qpid-proton
reactor on 127.0.0.1 can stand in for the namespace. It implements only what the SDK
needs to send messages and to receive and settle them:

* ``$cbs``: before attaching to an entity the SDK sends a ``put-token`` request and
  waits for a ``status-code: 202`` reply; tokens are not checked.
* One FIFO queue per entity (queue or topic name). Every subscription of a topic
  (``topic/Subscriptions/name``) reads from the topic's queue (competing consumers):
  enough for tests that use one subscription per topic.
* PEEK_LOCK settlement (complete, abandon, dead-letter) over the receive link, and
  RECEIVE_AND_DELETE. Unsettled messages are redelivered as soon as their link
  closes (Service Bus would wait for the lock to expire).
* Batches (``create_message_batch``) arrive as one AMQP message whose data sections
  are the encoded messages; they are unpacked.
* ``$management`` requests (peek, renew lock, schedule...) get status 501, so the SDK
  raises a clear error instead of timing out.
* Fault injection: ``AmqpBroker(refuse_sends=0.05, seed=7)`` rejects that share of the
  messages sent to entities, chosen by a seeded generator; a refused message is not kept.
  ``refused`` counts them and ``refused_ids`` lists their message ids. The rejection carries
  ``refuse_condition``: by default ``amqp:internal-error``, a transient failure the SDK
  retries itself (4 tries, backing off: about 15 s for a message refused every time), so a
  refusal rarely reaches the application; ``QUOTA_EXCEEDED`` (``amqp:resource-limit-exceeded``,
  Service Bus's answer when an entity is full until its consumers catch up) is one the SDK
  does not retry: every refusal reaches the code that called ``send_messages``.
  ``stop()`` then ``start()`` is an outage: same port, the record of what arrived kept.

Tests inspect what arrived with :meth:`AmqpBroker.messages` and
:meth:`AmqpBroker.wait_for`; that record is kept whether or not a client has
consumed the messages.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from proton import (
    Condition,
    Connection,
    Data,
    DataException,
    Delivery,
    Described,
    Endpoint,
    Event,
    Handler,
    Link,
    Message,
    Receiver,
    Sender,
)
from proton.reactor import ApplicationEvent, Container, EventInjector

HOST = "127.0.0.1"
# The emulator's well-known SAS key; the broker does not check tokens.
SAS_KEY_NAME = "RootManageSharedAccessKey"
SAS_KEY_VALUE = "SAS_KEY_VALUE"
# Rejection conditions for refused sends: retried inside the SDK, or handed to its caller.
INTERNAL_ERROR = "amqp:internal-error"
QUOTA_EXCEEDED = "amqp:resource-limit-exceeded"

# Descriptor codes of the AMQP 1.0 message sections (header ... footer).
_FIRST_SECTION, _LAST_SECTION = 0x70, 0x78
_PROPERTIES_SECTION, _APPLICATION_PROPERTIES_SECTION, _DATA_SECTION, _AMQP_VALUE_SECTION = 0x73, 0x74, 0x75, 0x77
# Credit granted to each client sender, topped up as messages arrive.
_CREDIT_WINDOW = 100


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as it arrived at the broker (batches already unpacked).

    ``body`` joins the data sections (a str amqp-value body is UTF-8 encoded); ids are as
    sent (str for the SDK's str ids); proton's ``symbol``/``int32``... become ``str``/``int``."""

    body: bytes
    message_id: Any
    correlation_id: Any
    subject: str | None
    content_type: str | None
    application_properties: dict[str, Any]

    @classmethod
    def decode(cls, encoded: bytes) -> ReceivedMessage:
        """Read the sections directly: proton's ``Message.content_type`` turns a missing value into "None"."""
        properties: list[Any] = []  # message-id, user-id, to, subject, reply-to, correlation-id, content-type, ...
        application_properties: dict[str, Any] = {}
        body = bytearray()
        for code, value in _sections(encoded):
            if code == _PROPERTIES_SECTION:
                properties = value
            elif code == _APPLICATION_PROPERTIES_SECTION:
                application_properties = {str(k): _plain(v) for k, v in value.items()}
            elif code == _DATA_SECTION:
                body += value
            elif code == _AMQP_VALUE_SECTION:  # AmqpAnnotatedMessage(value_body=...): str or bytes only
                if not isinstance(value, str | bytes):
                    raise TypeError(f"amqp-value body of type {type(value).__name__} is not supported")
                body += value.encode("utf-8") if isinstance(value, str) else value

        def prop(index: int) -> Any:  # trailing empty fields are left out of the encoded list
            return _plain(properties[index]) if index < len(properties) else None

        return cls(
            body=bytes(body),
            message_id=prop(0),
            correlation_id=prop(5),
            subject=prop(3),
            content_type=prop(6),
            application_properties=application_properties,
        )


def _plain(value: Any) -> Any:
    """proton's ``symbol``/``int32``/... subclasses -> plain ``str``/``int`` (others unchanged)."""
    for plain in (bool, int, float, str):
        if isinstance(value, plain):
            return plain(value)
    return value


class AmqpBroker:
    """AMQP 1.0 broker on ``127.0.0.1:<port>``, run by a proton reactor in a thread.

    The port is chosen by the OS on the first start (port 0, read back from the listening socket) and kept for
    later starts; ``port`` and ``connection_string`` are known once started.
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self, *, refuse_sends: float = 0.0, seed: int | None = None, refuse_condition: str = INTERNAL_ERROR
    ) -> None:
        self.port: int | None = None
        self.refuse_sends = refuse_sends
        self.refuse_condition = refuse_condition
        self.refused = 0  # messages rejected by fault injection so far
        self.refused_ids: list[Any] = []  # their message ids, in order
        self._rng = random.Random(seed)
        self._arrived: dict[str, list[ReceivedMessage]] = {}
        self._changed = threading.Condition()
        self._injector: EventInjector | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def connection_string(self) -> str:
        """Emulator-style: plain AMQP to ``Endpoint``'s port; the key is not checked."""
        if self.port is None:
            raise RuntimeError("the broker's port is chosen when it first starts: start it first")
        return (
            f"Endpoint=sb://{HOST}:{self.port};SharedAccessKeyName={SAS_KEY_NAME};"
            f"SharedAccessKey={SAS_KEY_VALUE};UseDevelopmentEmulator=true"
        )

    def start(self) -> AmqpBroker:
        """Listen on the port (before returning) and run the reactor in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("broker already started")
        self._injector = EventInjector()
        handler = _BrokerHandler(self._record, self._injector, self._refuse, self.refuse_condition)
        container = Container(handler)
        container.selectable(self._injector)
        handler.acceptor = container.listen(f"{HOST}:{self.port or 0}")  # binds and listens now
        # proton's Acceptor keeps its listening socket in ``_selectable`` (python-qpid-proton is pinned in
        # requirements-dev.txt), whose attributes are the socket's.
        self.port = handler.acceptor._selectable.getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, args=(container,), name=f"amqp-broker-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close every connection and the listening socket, then join the reactor thread.

        Re-raises an exception that stopped the reactor early, so a broker bug fails the test."""
        if self._thread is None or self._injector is None:
            return
        if self._thread.is_alive():
            self._injector.trigger(ApplicationEvent("broker_stop"))
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"AMQP broker thread did not stop within {timeout_s:g} s")
        # EventInjector.close() does not close its wake-up pipe; do it so no descriptors leak.
        for fd in self._injector.pipe:
            os.close(fd)
        self._thread = None
        self._injector = None
        if self._error is not None:
            raise RuntimeError("the AMQP broker reactor failed") from self._error

    def __enter__(self) -> AmqpBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def messages(self, address: str) -> list[ReceivedMessage]:
        """Everything that arrived at ``address`` (queue or topic name), oldest first."""
        with self._changed:
            return list(self._arrived.get(address, ()))

    def wait_for(self, address: str, count: int, timeout_s: float = 10.0) -> list[ReceivedMessage]:
        """Wait until at least ``count`` messages arrived at ``address``; return them all."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while len(self._arrived.get(address, ())) < count:
                if self._error is not None:
                    raise RuntimeError("the AMQP broker reactor failed") from self._error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    got = len(self._arrived.get(address, ()))
                    raise TimeoutError(f"{got} of {count} messages arrived at {address!r} within {timeout_s:g} s")
                self._changed.wait(remaining)
            return list(self._arrived[address])

    def _run(self, container: Container) -> None:
        try:
            container.run()
        except BaseException as exc:  # reported by stop() and wait_for()
            self._error = exc
        finally:
            with self._changed:
                self._changed.notify_all()

    def _refuse(self, messages: list[ReceivedMessage]) -> bool:
        """Called on the reactor thread for every message (or batch) sent to an entity: reject this one?"""
        if not self.refuse_sends or self._rng.random() >= self.refuse_sends:
            return False
        with self._changed:
            self.refused += 1
            self.refused_ids.extend(m.message_id for m in messages)
        return True

    def _record(self, address: str, messages: list[ReceivedMessage]) -> None:
        """Called on the reactor thread for every message that arrives (batches unpacked)."""
        with self._changed:
            self._arrived.setdefault(address, []).extend(messages)
            self._changed.notify_all()


class _BrokerHandler(Handler):
    """Reactor-thread side of the broker; nothing here is touched from other threads."""

    def __init__(
        self,
        record: Callable[[str, list[ReceivedMessage]], None],
        injector: EventInjector,
        refuse: Callable[[list[ReceivedMessage]], bool] = lambda messages: False,
        refuse_condition: str = INTERNAL_ERROR,
    ) -> None:
        self._record = record
        self._injector = injector
        self._refuse = refuse
        self._refuse_condition = refuse_condition
        self.acceptor: Any = None  # proton's Acceptor, set by AmqpBroker.start()
        self._connections: set[Connection] = set()
        self._queues: dict[str, deque[bytes]] = {}
        # Unsettled deliveries to PEEK_LOCK receivers -> (queue, message), so that an
        # abandoned message, or one whose receiver goes away unsettled, is delivered again.
        self._in_flight: dict[Delivery, tuple[str, bytes]] = {}

    # -- endpoints: accept whatever the client opens ------------------------------------

    def on_connection_remote_open(self, event: Event) -> None:
        self._connections.add(event.connection)
        event.connection.open()

    def on_session_remote_open(self, event: Event) -> None:
        event.session.open()

    def on_link_remote_open(self, event: Event) -> None:
        """Any address is accepted: entities need not be created first. proton's default
        source/target in our attach is enough for the SDK (it does not check them)."""
        link = event.link
        link.open()
        if link.is_receiver:
            link.flow(_CREDIT_WINDOW)
        else:
            self._pump(link)

    def on_link_flow(self, event: Event) -> None:
        if event.link.is_sender:
            self._pump(event.link)

    def on_link_remote_close(self, event: Event) -> None:
        event.link.close()  # first, so that requeued messages are not pumped into it
        self._requeue([d for d in self._in_flight if d.link == event.link])

    def on_session_remote_close(self, event: Event) -> None:
        event.session.close()

    def on_connection_remote_close(self, event: Event) -> None:
        event.connection.close()

    def on_transport_closed(self, event: Event) -> None:
        """The socket is gone (closed cleanly or not): forget the connection."""
        connection = event.connection
        self._connections.discard(connection)  # first, so that requeued messages are not pumped into it
        self._requeue([d for d in self._in_flight if d.link.connection == connection])

    # -- deliveries -------------------------------------------------------------------

    def on_delivery(self, event: Event) -> None:
        delivery = event.delivery
        link = delivery.link
        if link.is_sender:
            if delivery.updated:
                self._on_settlement(delivery)
        elif delivery.readable and not delivery.partial:
            encoded = link.recv(delivery.pending)
            link.advance()
            try:
                self._on_message(link, encoded)
            except Exception as exc:  # the client's send fails with this; the broker keeps running
                condition = self._refuse_condition if isinstance(exc, _Refused) else INTERNAL_ERROR
                # The SDK reads the error's info field unconditionally: it must be present.
                error = Condition(condition, f"test AMQP broker: {exc!r}", {"source": "AmqpBroker"})
                delivery.local.condition = error
                delivery.update(Delivery.REJECTED)
            else:
                delivery.update(Delivery.ACCEPTED)
            delivery.settle()
            link.flow(1)  # keep the client's credit at the window

    def _on_message(self, link: Receiver, encoded: bytes) -> None:
        address = _entity(link.remote_target.address)
        if address == "$cbs":
            self._reply(link, encoded, {"status-code": 202, "status-description": "Accepted"})
        elif address.endswith("/$management"):
            # Lock renewal, peek, deferral...: the send and receive-and-complete paths don't use them.
            detail = "not implemented by the test AMQP broker"
            self._reply(link, encoded, {"statusCode": 501, "statusDescription": detail})
        else:
            messages = _unbatch(encoded)
            received = [ReceivedMessage.decode(m) for m in messages]
            if self._refuse(received):
                raise _Refused("refused by fault injection (refuse_sends)")
            self._record(address, received)
            self._queues.setdefault(address, deque()).extend(messages)
            self._pump_all(address)

    def _reply(self, link: Receiver, encoded: bytes, status: dict[str, Any]) -> None:
        """Answer a request-response node ($cbs put-token, $management) the way the SDK waits for:
        ``correlation_id`` = the request's ``message_id``, sent on the client's receiver for the
        request's ``reply_to`` (the SDK sets none for $cbs: then the node itself) on the same connection."""
        request = Message()
        request.decode(encoded)
        reply_to = _entity(request.reply_to or link.remote_target.address)
        for sender in _links(link.connection, Sender):
            if reply_to in (_entity(sender.remote_source.address), _entity(sender.remote_target.address)):
                sender.send(Message(correlation_id=request.id, properties=status), tag=uuid.uuid4().bytes).settle()
                return
        raise RuntimeError(f"no receiver attached for the reply to {reply_to!r}")

    def _pump_all(self, queue_name: str) -> None:
        for connection in self._connections:
            for sender in _links(connection, Sender):
                if _queue_of(sender) == queue_name:
                    self._pump(sender)

    def _pump(self, sender: Sender) -> None:
        """Deliver queued messages while the client's receiver has credit."""
        queue_name = _queue_of(sender)
        queue = self._queues.get(queue_name)
        while queue and sender.credit > 0:
            encoded = queue.popleft()
            # A 16-byte tag: the SDK's ServiceBusReceivedMessage.lock_token is UUID(bytes_le=tag).
            delivery = sender.delivery(uuid.uuid4().bytes)
            sender.stream(encoded)
            sender.advance()
            if sender.remote_snd_settle_mode == Link.SND_SETTLED:  # RECEIVE_AND_DELETE asks for this
                delivery.settle()
            else:
                self._in_flight[delivery] = (queue_name, encoded)
        if sender.drain_mode:  # a closing PEEK_LOCK receiver drains its credit; give the rest back
            sender.drained()

    def _on_settlement(self, delivery: Delivery) -> None:
        """PEEK_LOCK settlement: complete (ACCEPTED) and dead-letter (REJECTED) drop the message,
        abandon (RELEASED/MODIFIED) puts it back at the head of its queue. The SDK's receiver uses
        receiver-settle-mode "second": it waits until the broker echoes the outcome and settles."""
        state = delivery.remote_state
        delivery.update(state)
        delivery.settle()
        if delivery not in self._in_flight:  # pre-settled (RECEIVE_AND_DELETE)
            return
        if state in (Delivery.RELEASED, Delivery.MODIFIED):
            self._requeue([delivery])
        else:
            del self._in_flight[delivery]

    def _requeue(self, deliveries: list[Delivery]) -> None:
        """Put unsettled messages back at the head of their queues (in their original order)
        and deliver them again. Service Bus would wait for the lock to expire first."""
        queue_names = set()
        for delivery in reversed(deliveries):
            queue_name, encoded = self._in_flight.pop(delivery)
            self._queues.setdefault(queue_name, deque()).appendleft(encoded)
            queue_names.add(queue_name)
        for queue_name in queue_names:
            self._pump_all(queue_name)

    # -- shutdown ---------------------------------------------------------------------

    def on_broker_stop(self, event: Event) -> None:
        """Injected by AmqpBroker.stop(). The reactor returns once nothing is left to watch:
        close the listener and every connection (sending AMQP close, then dropping the socket
        without waiting for the client's close), then the injector itself."""
        assert self.acceptor is not None
        self.acceptor.close()
        for connection in list(self._connections):
            connection.close()
            connection.transport.close_tail()
        self._injector.close()


class _Refused(Exception):
    """A send rejected on purpose; the client sees the broker's `refuse_condition`."""


def _links[L: Link](connection: Connection, kind: type[L]) -> list[L]:
    """The open links of ``connection`` of one kind (``Sender``: the client receives on it)."""
    found = []
    link = connection.link_head(Endpoint.LOCAL_ACTIVE)
    while link is not None:
        if isinstance(link, kind):
            found.append(link)
        link = link.next(Endpoint.LOCAL_ACTIVE)
    return found


def _entity(address: str | None) -> str:
    """``amqps://host/queue`` or ``sb://host:port/queue`` -> ``queue``; bare names unchanged."""
    if not address:
        return ""
    if "://" in address:
        return urlparse(address).path.lstrip("/")
    return address


def _queue_of(sender: Sender) -> str:
    """The queue a client receiver reads: ``topic/Subscriptions/name`` reads the topic's queue."""
    entity = _entity(sender.remote_source.address)
    topic, separator, _subscription = entity.partition("/Subscriptions/")
    return topic if separator else entity


def _sections(encoded: bytes) -> list[tuple[int | None, Any]]:
    """Split an encoded AMQP message into ``(descriptor code, value)`` pairs, one per section."""
    sections = []
    while encoded:
        data = Data()
        consumed = data.decode(encoded)
        data.rewind()
        data.next()
        section = _owned(data.get_object())
        if isinstance(section, Described):
            sections.append((int(section.descriptor), section.value))
        else:
            sections.append((None, section))
        encoded = encoded[consumed:]
    return sections


def _owned(value: Any) -> Any:
    """Copy binary values out of proton's ``Data`` buffer: they are views that dangle once it is freed."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, Described):
        return Described(value.descriptor, _owned(value.value))
    if isinstance(value, dict):
        return {key: _owned(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_owned(item) for item in value]
    return value


def _unbatch(encoded: bytes) -> list[bytes]:
    """Split a batch into its messages; any other message is returned as is.

    The SDK sends a batch as one transfer with message format 0x80013700 whose data
    sections each hold one encoded message (plus a properties section of its own).
    proton does not expose the transfer's message format, so the shape is checked:
    every data section must decode as a complete AMQP message."""
    try:
        sections = _sections(encoded)
    except DataException:
        return [encoded]
    payloads = [value for code, value in sections if code == _DATA_SECTION]
    if payloads and all(_is_message(p) for p in payloads):
        return payloads
    return [encoded]


def _is_message(encoded: bytes) -> bool:
    """True when ``encoded`` is nothing but a sequence of AMQP message sections."""
    try:
        sections = _sections(encoded)
    except DataException:
        return False
    return bool(sections) and all(code is not None and _FIRST_SECTION <= code <= _LAST_SECTION for code, _ in sections)
