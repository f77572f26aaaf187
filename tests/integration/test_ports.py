"""The port helpers: a held closed port, and reading what a child reports from its log."""

import errno
import socket
from pathlib import Path

import pytest

from tests.support.azurite import Azurite, AzuriteError
from tests.support.devhost import DevHost
from tests.support.ports import closed_port, port_is_open, wait_for_output


def test_a_closed_port_refuses_connections_and_cannot_be_taken_while_held() -> None:
    with closed_port() as port:
        assert not port_is_open("127.0.0.1", port)
        for reuse in (False, True):  # servers often set SO_REUSEADDR (asyncio, uvicorn, proton)
            with socket.socket() as other, pytest.raises(OSError) as taken:
                other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)
                other.bind(("127.0.0.1", port))
            assert taken.value.errno == errno.EADDRINUSE


def test_wait_for_output_returns_what_the_parser_finds(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    log.write_text("starting\nlistening on 127.0.0.1:4242\n")
    assert wait_for_output(log, lambda text: int(text.rsplit(":", 1)[1]) if "listening" in text else None, 1) == 4242


def test_wait_for_output_times_out_or_stops_when_the_check_raises(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    log.write_text("starting\n")
    with pytest.raises(TimeoutError, match=r"child\.log"):
        wait_for_output(log, lambda text: None, 0.1)

    def exited() -> None:
        raise RuntimeError("child exited")

    with pytest.raises(RuntimeError, match="child exited"):
        wait_for_output(log, lambda text: None, 30, check=exited)


def test_ports_chosen_at_start_are_unknown_before() -> None:
    with pytest.raises(AzuriteError, match="start it first"):
        _ = Azurite().connection_string
    with pytest.raises(RuntimeError, match="start it first"):
        _ = DevHost().url
    assert Azurite(10000, 10001, 10002).connection_string.count("127.0.0.1:1000") == 3  # explicit ports are known
