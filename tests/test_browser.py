"""The explorer in a real browser: headless Chromium (Debian's package) driven by Playwright against
`streamlit run apps/explorer.py` on localhost.

.ci/run installs chromium and sets COCONUT_BROWSER_TEST=required, so that there a missing browser is a
failure; elsewhere the test is skipped when no chromium is installed. COCONUT_SCREENSHOTS=DIR also
keeps the screenshots there (the README's come from this test).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("kernels")  # pytest -n 2: one kernel or browser at a time

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# as root, with no network: no sandbox, and none of Chromium's background connections
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
WAIT_MS = 180_000


def _unavailable(why: str) -> None:
    if os.environ.get("COCONUT_BROWSER_TEST") == "required":
        pytest.fail(why)
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`streamlit run` on a free localhost port; its URL once it answers its health check."""
    if CHROMIUM is None:
        _unavailable("no chromium on PATH (Debian: apt-get install chromium)")
    port = _free_port()
    log = open(tmp_path_factory.mktemp("streamlit") / "server.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "apps" / "explorer.py"), "--server.headless=true",
         f"--server.port={port}", "--server.address=127.0.0.1", "--browser.gatherUsageStats=false",
         "--server.fileWatcherType=none"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                pytest.fail(f"streamlit did not start:\n{log.read()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_the_explorer_in_chromium(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    keep = [tmp_path] + ([Path(os.environ["COCONUT_SCREENSHOTS"])] if os.environ.get("COCONUT_SCREENSHOTS") else [])
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.on("pageerror", lambda e: errors.append(str(e)))

        def shoot(name: str) -> None:
            page.wait_for_timeout(500)  # let plotly finish drawing
            for d in keep:
                d.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(d / name))

        def settled() -> None:
            """No script run in progress (Streamlit's status widget gone)."""
            page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=WAIT_MS)

        page.goto(server)
        page.get_by_text("after 6 thoughts the model answers").wait_for(timeout=WAIT_MS)
        page.locator("text=frontier after 1 thought(s)").wait_for(timeout=WAIT_MS)

        slider = page.get_by_role("slider").first  # the thought slider of the graph panel
        slider.focus()
        page.keyboard.press("ArrowRight")
        page.locator("text=frontier after 2 thought(s)").wait_for(timeout=WAIT_MS)
        assert page.get_by_test_id("stSliderThumbValue").first.inner_text() == "2"
        page.get_by_text("lens probability", exact=True).click()
        settled()
        page.locator("text=lens p").first.wait_for(timeout=WAIT_MS)  # the colour bar's title
        shoot("explorer-graph.png")

        waits = {
            "lens": "text=logit lens: probability on the frontier",
            "superposition": "text=Superposition: the inner product of thought k",
            "probes & SAE": "text=frontier probe on blocks.3.hook_resid_post",
            "interventions": "text=unedited:",
            "data set": "text=press measure",
        }
        for tab, marker in waits.items():
            page.get_by_role("tab", name=tab).click()
            page.locator(marker).first.wait_for(timeout=WAIT_MS)
            settled()
            if tab in ("probes & SAE", "interventions"):
                shoot(f"explorer-{tab.split()[0]}.png")
        items = page.get_by_label("items")
        items.fill("3")
        items.press("Enter")
        settled()
        page.get_by_role("button", name="measure").click()
        page.locator("text=frontier value mass").first.wait_for(timeout=WAIT_MS)
        settled()
        shoot("explorer-data-set.png")

        page.get_by_role("tab", name="graph").click()  # the slider kept its value while its tab was closed
        page.locator("text=frontier after 2 thought(s)").wait_for(timeout=WAIT_MS)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0
        browser.close()
    assert not errors, errors
    assert (tmp_path / "explorer-graph.png").stat().st_size > 10_000
