"""The operator console in a real browser: Playwright driving Debian's Chromium (headless) against a devhost.

The page's numbers are checked against the operator routes it reads, its "disable" button is clicked and the
next request avoids that backend, its "suspend" button refuses a caller and "resume" lets it in again, and an
error message from outside that looks like HTML is shown as text and never runs. The page keeps its
Content-Security-Policy throughout: nothing here bypasses it. `make test` installs Chromium when it is missing
(as root); without it this test skips and says why.

The usage table also holds an hour of history from another instance (rows written through `UsageTable`, as
that instance would have flushed them), so the charts have something to draw.
`CONSOLE_SCREENSHOT=docs/console.png` also writes the screenshot there (how docs/console.png is made).
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from gateway.storage import StorageAccount
from gateway.usage_store import Counts, UsageTable
from tests.support.devhost import DevHost
from tests.support.fake_openai import FakeAzureOpenAI, Fault

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Chromium is not installed (make test installs it with apt-get when run as root)",
)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
KEYS = {"team-a": "console-key-a", "team-b": "console-key-b", "analytics": "console-key-c"}
OPERATOR = {"x-functions-key": "devhost-function-key"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello console"}]}
HOSTILE = '<img src=x onerror="document.title=\'pwned\'">'


def seed_history(connection_string: str, table_name: str) -> None:
    """An hour of another instance's usage, written as that instance's flushes would have written it."""
    account = StorageAccount(connection_string=connection_string)
    table = UsageTable(lambda: account.table_client(table_name, None), "instance-b")
    now = int(time.time() // 60)
    rows = {}
    for ago in range(2, 50):  # well inside the hour, so a minute passing during the test changes no total
        for phase, (caller, backend, scale) in enumerate((("team-a", "weu", 900), ("team-b", "neu", 400),
                                                          ("analytics", "weu", 150))):
            wave = 3 + round(2 * math.sin(ago / 7 + phase * 2)) + (ago * 13 + phase) % 3  # 1..7 requests a minute
            rows[(now - ago, caller, "gpt-4o-mini", backend, "gpt-4o-mini")] = Counts(
                requests=wave, input_tokens=scale * wave, output_tokens=scale * wave // 3, cached_tokens=scale // 10,
                throttled=int(caller == "team-b" and ago % 11 == 0),
            )

    async def write() -> None:
        try:
            await table.write(rows)
        finally:
            await table.close()

    asyncio.run(write())


def number(text: str) -> int:
    return int(text.replace(",", "").strip())


def test_the_console_shows_the_gateway_and_its_disable_button_works(azurite, tmp_path):
    weu, neu = FakeAzureOpenAI(name="weu"), FakeAzureOpenAI(name="neu")
    suffix = uuid.uuid4().hex[:8]
    with weu.threaded(), neu.threaded():
        env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "GATEWAY_STATE_TABLE": "console" + suffix,
            "GATEWAY_USAGE_TABLE": "consoleusage" + suffix,
            "GATEWAY_RESULTS_CONTAINER": "console-" + suffix,
            "GATEWAY_COMPLETIONS_QUEUE": "console-" + suffix,
            "GATEWAY_USAGE_FLUSH_S": "1",
            "GATEWAY_API_KEYS": ",".join(f"{name}:{key}" for name, key in KEYS.items()),
            "GATEWAY_PROFILE_GOLD": "rpm=600;tpm=200000",
            "GATEWAY_CALLER_PROFILES": "team-a=gold",
            "GATEWAY_BACKEND_1": f"name=weu;host={weu.url};mode=direct;api-key=fake-key;priority=1;tier=ptu;"
            "deployments=gpt-4o-mini,text-embedding-3-small",
            "GATEWAY_BACKEND_2": f"name=neu;host={neu.url};mode=direct;api-key=fake-key;priority=2;tier=paygo;"
            "deployments=gpt-4o-mini",
        }
        seed_history(azurite.connection_string, env["GATEWAY_USAGE_TABLE"])
        with DevHost(env=env) as host, httpx.Client(base_url=host.url, timeout=30) as http:
            for caller, count in (("team-a", 4), ("team-b", 2)):
                for _ in range(count):
                    answer = http.post("/v1/chat/completions", json=CHAT, headers={"api-key": KEYS[caller]})
                    assert answer.status_code == 200
            embedding = {"model": "text-embedding-3-small", "input": "hi"}
            answer = http.post("/v1/embeddings", json=embedding, headers={"api-key": KEYS["analytics"]})
            assert answer.status_code == 200
            # An async request whose backend answers with an error message that looks like HTML.
            weu.enqueue(Fault.status(400, body={"error": {"code": "bad_request", "message": HOSTILE}}))
            accepted = http.post("/v1/chat/completions", json=CHAT,
                                 headers={"api-key": KEYS["team-b"], "Prefer": "respond-async"})
            deadline = time.monotonic() + 30
            while http.get(accepted.headers["Location"], headers={"api-key": KEYS["team-b"]}).status_code == 202:
                assert time.monotonic() < deadline

            with playwright.sync_playwright() as driver:
                browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    problems: list[str] = []
                    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
                    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                    response = page.goto(f"{host.url}/gateway/console?code=devhost-function-key&refresh=1")
                    assert response is not None and response.status == 200
                    assert "script-src 'sha256-" in response.headers["content-security-policy"]
                    page.wait_for_selector('body[data-refreshes="1"]', state="attached")

                    # Callers: the page's numbers are the usage API's, which sums both instances.
                    usage = http.get("/gateway/usage", params={"window": "1h", "by": "caller"}, headers=OPERATOR).json()
                    assert usage["instances"] == 2
                    for row in usage["rows"]:
                        line = page.locator(f'#callers tr[data-caller="{row["caller"]}"]')
                        for field in ("requests", "input_tokens", "output_tokens", "throttled", "failed"):
                            assert number(line.locator(f'td[data-field="{field}"]').inner_text()) == row[field], field
                    assert page.locator("#callers tbody tr").count() == len(usage["rows"]) == 3

                    # Governance beside usage: profile, limits and status as /gateway/callers says.
                    known = {c["caller"]: c for c in http.get("/gateway/callers", headers=OPERATOR).json()["callers"]}
                    team_a = page.locator('#callers tr[data-caller="team-a"]')
                    assert known["team-a"]["limits"] == {"rpm": 600, "tpm": 200000, "concurrency": None}
                    assert known["team-a"]["profile"] == "gold"
                    assert team_a.locator('td[data-field="profile"]').inner_text() == "gold"
                    assert team_a.locator('td[data-field="limits"]').inner_text() == "600 / 200,000"
                    assert team_a.locator('td[data-field="status"]').inner_text() == "active"
                    team_b = page.locator('#callers tr[data-caller="team-b"]')
                    assert known["team-b"]["limits"] is None and known["team-b"]["window"] == []
                    assert team_b.locator('td[data-field="limits"]').inner_text() == "none"
                    assert team_b.locator('td[data-field="window"]').inner_text() == "\u2013"

                    # The last 60 s against the limits: team-a's four requests, as /gateway/callers says.
                    [window] = known["team-a"]["window"]
                    assert window["requests"]["admitted_here"] == 4 and window["tokens"]["admitted_here"] > 0
                    shown = team_a.locator('td[data-field="window"]')
                    deadline = time.monotonic() + 10
                    while True:  # `used` is a shared estimate that may move once as a slice expires: poll both
                        [window] = next(c for c in http.get("/gateway/callers", headers=OPERATOR).json()["callers"]
                                        if c["caller"] == "team-a")["window"]
                        used = window["requests"]["used"], window["tokens"]["used"]
                        want = (f"{used[0]:,} / 600 RPM", f"{used[1]:,} / 200,000 TPM")
                        got = tuple(shown.locator(f'[data-window="{w}"]').inner_text() for w in ("requests", "tokens"))
                        if got == want:
                            break
                        assert time.monotonic() < deadline, (got, want)
                        page.wait_for_function("n => Number(document.body.dataset.refreshes) > n",
                                               arg=int(page.locator("body").get_attribute("data-refreshes")))
                    assert 4 <= window["requests"]["used"] <= 600

                    # It refreshes on its own: traffic sent now shows on the page with no click.
                    requests_cell = page.locator('#callers tr[data-caller="analytics"] td[data-field="requests"]')
                    before = number(requests_cell.inner_text())
                    refreshes = int(page.locator("body").get_attribute("data-refreshes"))
                    for _ in range(2):
                        answer = http.post("/v1/embeddings", json=embedding, headers={"api-key": KEYS["analytics"]})
                        assert answer.status_code == 200
                    playwright.expect(requests_cell).to_have_text(f"{before + 2:,}", timeout=15_000)
                    assert int(page.locator("body").get_attribute("data-refreshes")) > refreshes


                    # Backends: breaker, in-flight count and latency as /gateway/backends says.
                    view = http.get("/gateway/backends", headers=OPERATOR).json()
                    for backend in view["backends"]:
                        name = backend["config"]["name"]
                        line = page.locator(f'#backends tr[data-backend="{name}"]:not(.deployment)')
                        assert line.locator('td[data-field="breaker"]').inner_text() == backend["breaker"]
                        assert number(line.locator('td[data-field="in_flight"]').inner_text()) == backend["in_flight"]
                        shown = line.locator('td[data-field="latency_ms"]').inner_text()
                        if backend["latency_ewma_ms"] is None:
                            assert shown == "\u2013"  # an en dash: nothing measured yet
                        else:
                            assert float(shown) == pytest.approx(backend["latency_ewma_ms"], abs=0.05)

                    # Charts: one line per caller and per backend; the caller lines add up to the usage API.
                    per_minute = http.get("/gateway/usage", params={"window": "1h", "by": "caller", "per": "minute"},
                                          headers=OPERATOR).json()
                    lines = page.locator("#chart-caller polyline")
                    assert lines.count() == 3
                    drawn = {lines.nth(i).get_attribute("data-name"): number(lines.nth(i).get_attribute("data-total"))
                             for i in range(3)}
                    for caller, total in drawn.items():
                        assert total == sum(r["input_tokens"] + r["output_tokens"] for r in per_minute["rows"]
                                            if r["caller"] == caller)
                    assert page.locator("#chart-backend polyline").count() == 2

                    # Recent work: the hostile message is text, not markup, and nothing ran.
                    error_cell = page.locator('#work td[data-field="error"]').first
                    assert error_cell.inner_text() == HOSTILE
                    assert page.locator("#work img").count() == 0 and page.title() != "pwned"

                    # Suspend team-b from the page: its next request is refused; resume lets it in again.
                    page.click('#callers tr[data-caller="team-b"] button[data-action="suspend"]')
                    status = '#callers tr[data-caller="team-b"] td[data-field="status"]'
                    page.wait_for_selector(f"{status} >> text=suspended")
                    answer = http.post("/v1/chat/completions", json=CHAT, headers={"api-key": KEYS["team-b"]})
                    assert answer.status_code == 403 and answer.json()["error"]["code"] == "caller_suspended"
                    page.click('#callers tr[data-caller="team-b"] button[data-action="resume"]')
                    page.wait_for_selector(f"{status} >> text=active")
                    answer = http.post("/v1/chat/completions", json=CHAT, headers={"api-key": KEYS["team-b"]})
                    assert answer.status_code == 200

                    # Disable weu from the page: the next request goes to neu.
                    weu_before = len(weu.requests)
                    page.click('#backends tr[data-backend="weu"]:not(.deployment) button[data-action="disable"]')
                    page.wait_for_selector('#backends tr[data-backend="weu"]:not(.deployment) td[data-field="breaker"]'
                                           ' >> text=disabled')
                    answer = http.post("/v1/chat/completions", json=CHAT, headers={"api-key": KEYS["team-a"]})
                    assert answer.status_code == 200 and answer.headers["x-gateway-backend"] == "neu"
                    assert len(weu.requests) == weu_before

                    screenshot = tmp_path / "console.png"
                    page.screenshot(path=str(screenshot), full_page=True)
                    assert screenshot.stat().st_size > 10_000
                    if target := os.environ.get("CONSOLE_SCREENSHOT"):
                        shutil.copyfile(screenshot, target)

                    page.click('#backends tr[data-backend="weu"]:not(.deployment) button[data-action="enable"]')
                    page.wait_for_selector('#backends tr[data-backend="weu"]:not(.deployment) td[data-field="breaker"]'
                                           ' >> text=closed')
                    answer = http.post("/v1/chat/completions", json=CHAT, headers={"api-key": KEYS["team-a"]})
                    assert answer.headers["x-gateway-backend"] == "weu"
                    assert problems == []  # no script error, no CSP violation, no failed request
                finally:
                    browser.close()
