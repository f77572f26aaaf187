"""The `stream-concurrency` workload: a short real sweep (idle, 1 and 20 held streams) against the development
host, and the rule that turns a sweep into a per-instance concurrency."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.concurrency_report import recommend, worker_core_share

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def sweep_rows(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> list[dict]:
    out = tmp_path_factory.mktemp("sweep") / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.concurrency", "--levels", "1,20", "--stream-s", "6", "--chunk-ms", "20",
         "--probes", "10", "--retries", "0", "--out", str(out)],
        cwd=repo_root, capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| held streams |" in proc.stdout
    return json.loads(out.with_name("bench-concurrency.json").read_text())


def test_every_level_held_all_its_streams_at_once(sweep_rows: list[dict]) -> None:
    assert [r["concurrency"] for r in sweep_rows] == [0, 1, 20]
    for row in sweep_rows:
        assert row["all_in_flight"] and row["in_flight"] == row["concurrency"], row
        assert row["errors"] == 0, row
        assert 0 < row["ttfb_p50_ms"] <= row["ttfb_p90_ms"] < 1000


def test_the_figures_are_measured_not_nominal(sweep_rows: list[dict]) -> None:
    twenty = sweep_rows[2]
    # 20 streams at one event per 20 ms: about 1,000 events/s actually reached the client.
    assert 600 < twenty["chunks_per_s"] < 1300, twenty
    assert twenty["cpu_cores"] > 0 and twenty["cpu_us_per_chunk"] > 0
    assert twenty["rss_mb"] >= sweep_rows[0]["rss_mb"] > 10
    # The shared-state refresh is periodic (at most once a second), whatever the number of streams.
    assert twenty["storage_ops_per_s"] is None or twenty["storage_ops_per_s"] <= 1.5


def _row(n: int, added: float, rss: float, errors: int = 0, all_in: bool = True) -> dict:
    return {"concurrency": n, "ttfb_added_ms": None if n == 0 else added, "rss_mb": rss,
            "rss_per_stream_kb": None if n == 0 else (rss - 70) * 1024 / n, "errors": errors, "all_in_flight": all_in}


def test_recommend_stops_at_the_first_level_over_budget() -> None:
    rows = [_row(0, 0, 70), _row(100, 2, 80), _row(200, 4, 90), _row(500, 12, 120), _row(1000, 3, 170)]
    rec = recommend(rows, 4096)
    assert rec["measured_one_core"] == 200  # 1,000 passing again does not count: 500 failed before it
    assert rec["value"] == int(200 * worker_core_share(4096))
    assert recommend(rows, 2048)["value"] == int(200 * worker_core_share(2048)) < rec["value"]


def test_recommend_is_capped_by_memory_and_by_failed_levels() -> None:
    heavy = [_row(0, 0, 70), _row(100, 1, 70 + 100 * 20)]  # 20 MB per stream
    rec = recommend(heavy, 2048)
    assert rec["by_memory"] == int((1024 - 70) / 20)
    assert rec["value"] == rec["by_memory"]
    broken = [_row(0, 0, 70), _row(10, 1, 71, errors=1)]
    assert recommend(broken, 2048)["value"] == 0
