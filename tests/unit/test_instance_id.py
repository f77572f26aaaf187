"""The name a process uses in shared state (slots, leases, usage rows) must be its own."""

from gateway.bootstrap import instance_id


def test_two_processes_on_one_azure_instance_get_different_names():
    """Azure keeps WEBSITE_INSTANCE_ID across a worker restart and shares it between worker processes: a name
    taken from it alone would let a restarted worker overwrite its predecessor's usage rows for the minute."""
    env = {"WEBSITE_INSTANCE_ID": "a" * 64}
    first, second = instance_id(env), instance_id(env)
    assert first != second
    assert first.startswith("a" * 16 + "-") and len(first) < 64  # the instance is still readable in the name


def test_without_azure_the_host_names_the_process():
    import socket

    assert instance_id({}).startswith(socket.gethostname() + "-")
