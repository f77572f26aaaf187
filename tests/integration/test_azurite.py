"""The Azurite helper: its connection string works with the real SDKs, and it restarts on its ports."""

import uuid

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.data.tables.aio import TableServiceClient
from azure.storage.blob.aio import BlobServiceClient
from azure.storage.queue.aio import QueueServiceClient

from tests.support.azurite import Azurite, AzuriteError
from tests.support.ports import port_is_open


def unique(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:12]


async def test_tables(azurite: Azurite) -> None:
    async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        table = await service.create_table(unique("t"))
        await table.upsert_entity({"PartitionKey": "p", "RowKey": "r", "value": 42})
        entity = await table.get_entity("p", "r")
    assert entity["value"] == 42


async def test_blobs(azurite: Azurite) -> None:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        container = await service.create_container(unique("c"))
        await container.upload_blob("hello.txt", b"hello")
        blob = await container.download_blob("hello.txt")
        assert await blob.readall() == b"hello"


async def test_queues(azurite: Azurite) -> None:
    async with QueueServiceClient.from_connection_string(azurite.connection_string) as service:
        queue = service.get_queue_client(unique("q"))
        await queue.create_queue()
        await queue.send_message("hello")
        messages = [m.content async for m in queue.receive_messages()]
    assert messages == ["hello"]


def test_connection_string_names_the_three_endpoints(azurite: Azurite) -> None:
    parts = dict(p.split("=", 1) for p in azurite.connection_string.rstrip(";").split(";"))
    assert parts["AccountName"] == "devstoreaccount1"
    assert parts["BlobEndpoint"] == f"http://127.0.0.1:{azurite.blob_port}/devstoreaccount1"
    assert parts["QueueEndpoint"] == f"http://127.0.0.1:{azurite.queue_port}/devstoreaccount1"
    assert parts["TableEndpoint"] == f"http://127.0.0.1:{azurite.table_port}/devstoreaccount1"


async def test_stop_and_start_on_the_same_ports() -> None:
    with Azurite() as storage:  # not the session instance: this one goes down mid-test
        ports = storage.ports
        connection_string = storage.connection_string
        # retry_total=0: the request made while storage is down fails at once instead of backing off.
        async with TableServiceClient.from_connection_string(connection_string, retry_total=0) as service:
            await service.create_table("beforestop")

            storage.stop()
            assert not any(port_is_open("127.0.0.1", port) for port in ports)
            with pytest.raises(ServiceRequestError):
                await service.create_table("whilestopped")

            storage.start()
            assert storage.ports == ports
            assert storage.connection_string == connection_string
            # In-memory data is gone after a restart; the same client works again.
            assert [t.name async for t in service.list_tables()] == []
            await service.create_table("afterrestart")
            assert [t.name async for t in service.list_tables()] == ["afterrestart"]


async def test_with_a_location_the_data_survives_a_restart(tmp_path) -> None:
    with Azurite(location=tmp_path) as storage:
        async with BlobServiceClient.from_connection_string(storage.connection_string, retry_total=0) as service:
            container = await service.create_container("outage")
            await container.upload_blob("kept.txt", b"still here")
            storage.stop()
            storage.start()
            assert await (await container.download_blob("kept.txt")).readall() == b"still here"


def test_missing_node_modules_is_a_clear_error(tmp_path) -> None:
    storage = Azurite(binary=tmp_path / "node_modules" / ".bin" / "azurite")
    with pytest.raises(AzuriteError, match="make deps"):
        storage.start()
    assert not storage.running
