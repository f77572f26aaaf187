"""Smoke test of the benchmark: `python -m bench.run --quick` (direct + gateway, chat-c1 and stream-c1, one
short round) must finish quickly, leave nothing running and write rows other tools can read."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import ROW_KEYS
from gateway.config import SETTINGS

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> tuple[list[dict], dict, str]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(out.read_text())
    meta = json.loads(out.with_name("bench-meta.json").read_text())
    return rows, meta, proc.stdout


def test_rows_have_the_stable_keys(quick_run: tuple[list[dict], dict, str]) -> None:
    rows, _, _ = quick_run
    assert {(r["target"], r["workload"]) for r in rows} == {
        (t, w) for t in ("direct", "gateway") for w in ("chat-c1", "stream-c1")
    }
    for row in rows:
        assert set(ROW_KEYS) <= row.keys()


def test_values_are_sane(quick_run: tuple[list[dict], dict, str]) -> None:
    rows, _, _ = quick_run
    for row in rows:
        assert row["errors"] == 0, row
        assert row["rps"] > 0 and row["requests"] > 0
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] < 5000
        if row["workload"].startswith("stream"):
            assert 0 < row["ttfb_p50_ms"] <= row["p99_ms"]
        else:
            assert row["ttfb_p50_ms"] is None
    for row in (r for r in rows if r["target"] == "direct"):
        assert row["cpu_ms_per_req"] is None and row["peak_rss_mb"] is None
        assert row["storage_ops_per_req"] is None
    for row in (r for r in rows if r["target"] == "gateway"):
        assert 0 < row["cpu_ms_per_req"] < 100
        assert 10 < row["peak_rss_mb"] < 2000
        # The bench's gateway has /gateway/stats, so storage operations are measured (null means unmeasured),
        # and they are the periodic state refresh only: at most one per refresh interval (the default, as the
        # bench sets none), plus one for a refresh at the run's edge; none per request.
        assert row["storage_ops_per_req"] is not None and row["storage_ops_per_s"] is not None, row
        refresh_s = int(SETTINGS["GATEWAY_STATE_REFRESH_MS"]) / 1000
        storage_ops = round(row["storage_ops_per_s"] * row["duration_s"])
        assert 0 <= storage_ops <= row["duration_s"] / refresh_s + 1, row
        assert storage_ops < row["requests"], row


def test_report_names_machine_and_table(quick_run: tuple[list[dict], dict, str]) -> None:
    _, meta, stdout = quick_run
    assert meta["machine"]["nproc"] >= 1 and len(meta["machine"]["loadavg_before"]) == 3
    assert "| target | workload | rps |" in stdout
    assert "| gateway | chat-c1 |" in stdout
