"""The benchmark's servers bind port 0 and the benchmark learns the ports they got (bench/children.py)."""

from __future__ import annotations

import contextlib
import json
import sys
import urllib.request
from pathlib import Path

import pytest

from bench import children, procstat

HOST = "127.0.0.1"
pytestmark = pytest.mark.timeout(60)


def test_the_fake_reports_both_ports_it_bound_and_they_are_the_ones_it_listens_on(repo_root: Path) -> None:
    with contextlib.ExitStack() as stack:
        proc, ports = children.start(stack, "fake", children.fake_command("weu"), children.FAKE_PORTS, host=HOST,
                                     root=repo_root)  # fmt: skip
        api, control = ports
        assert api != control and procstat.listening_ports(proc.pid) == {api, control}
        request = urllib.request.Request(f"http://{HOST}:{control}/latency?ms=7", method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:  # the control port is the control listener
            assert json.loads(answer.read()) == {"latency_ms": 7}
    assert proc.poll() is not None  # stopped with the stack


def test_a_server_that_prints_no_address_is_found_through_proc(repo_root: Path) -> None:
    command = [sys.executable, "-m", "bench.floor_proxy", "--upstream", "http://127.0.0.1:9"]
    with contextlib.ExitStack() as stack:
        proc, [printed] = children.start(stack, "floor", command, children.reported("floor-aiohttp"), host=HOST,
                                         root=repo_root)  # fmt: skip
        assert children.bound("", proc.pid) == [printed]


def test_a_server_that_exits_before_reporting_fails_with_its_log(repo_root: Path) -> None:
    command = [sys.executable, "-c", "print('cannot start: no such thing'); raise SystemExit(3)"]
    with contextlib.ExitStack() as stack, pytest.raises(RuntimeError) as failed:
        children.start(stack, "broken", command, children.reported("broken"), host=HOST, root=repo_root)
    assert "exited with code 3" in str(failed.value) and "cannot start: no such thing" in str(failed.value)
