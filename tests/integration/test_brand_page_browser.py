"""The brand's public page as a follower sees it, in a real headless Chromium: during an outage
(the real probes trip on a broken fake Bluesky) and after recovery.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); without them the test
is skipped and says why. The outage screenshot goes to the test's temporary folder; with
BROADCASTER_UPDATE_SCREENSHOT=1 it also replaces docs/img/brand-page.png, the one the docs show
(not on every run: the times in it would change the file each time).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import UMBRELLA, auth
from tests.harness import free_port, http, wait_for
from tests.integration.outage import wait_deliveries, wait_effective

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "brand-page.png"


@contextlib.contextmanager
def _serving() -> Iterator[str]:
    """The API under a real uvicorn on a free port of 127.0.0.1 (the browser needs a socket)."""
    import uvicorn

    from broadcaster.api import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(
            f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); .ci/run installs them"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=420,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    # The page is cacheable for 30 s; each load here must show the state of the moment.
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    try:
        yield driver
    finally:
        driver.quit()


def _page(browser, url: str) -> dict:
    from selenium.webdriver.common.by import By

    browser.get(url)
    return {
        "title": browser.title,
        "h1": browser.find_element(By.TAG_NAME, "h1").text,
        "status": browser.find_element(By.CSS_SELECTOR, "section.status").text,
        "links": {
            a.text: a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "ul.links a")
        },
        "posts": [a.text for a in browser.find_elements(By.TAG_NAME, "article")],
        "footer": browser.find_element(By.TAG_NAME, "footer").text,
        "lang": browser.find_element(By.TAG_NAME, "html").get_attribute("lang"),
    }


def test_the_brand_page_tells_followers_where_to_go_during_an_outage_and_after(
    api, stack, healthy, browser, tmp_path
):
    fake = healthy
    text = f"Our spring menu is out: oat flat white and cardamom buns ({uuid.uuid4().hex[:4]})"
    with _serving() as base:
        before = _page(browser, f"{base}/b/umbrella")
        assert before["h1"] == "Umbrella"
        assert "Bluesky is working" in before["status"]

        fake.fail("feeds", "error")  # the real worker's probes see it and trip the target
        wait_effective(api, stack, "down")
        r = api.post("/v1/posts", json={"text": text}, headers=auth(UMBRELLA))
        assert r.status_code == 202, r.text
        wait_deliveries(api, UMBRELLA, r.json()["id"], {"mastodon": "delivered", "rss": "delivered"})

        during = _page(browser, f"{base}/b/umbrella")
        assert "Bluesky is having trouble" in during["status"]
        assert "Read them on the channels below" in during["status"]
        assert "Since " in during["status"]
        assert "UTC" in during["status"]
        assert during["links"]["mastodon.example/@umbrella"] == "https://mastodon.example/@umbrella"
        assert during["links"]["t.me/umbrellanews"] == "https://t.me/umbrellanews"
        assert during["links"]["feeds/umbrella.rss"] == f"{base}/feeds/umbrella.rss"
        assert during["links"]["Text JOIN to +15005550006"] == "sms:+15005550006"
        assert any(text in p for p in during["posts"])
        assert during["footer"].startswith("Last update: ")
        assert during["lang"] == "en"
        shot = tmp_path / "brand-page.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes().startswith(b"\x89PNG")
        if os.environ.get("BROADCASTER_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(shot, SCREENSHOT)

        fake.heal()
        wait_effective(api, stack, "up")
        after = _page(browser, f"{base}/b/umbrella")
        assert "Bluesky is working" in after["status"]
        assert "having trouble" not in after["status"]
        assert any(text in p for p in after["posts"])

        plain = http.get(f"{base}/b/umbrella", timeout=10)
        assert plain.headers["cache-control"] == "public, max-age=30"
        assert plain.headers["content-type"].startswith("text/html")
        assert "<script" not in plain.text  # works without JavaScript
        assert len(plain.content) < 10_000  # light on bytes
        missing = http.get(f"{base}/b/no-such-brand", timeout=10)
        assert missing.status_code == 404
        assert "There is no brand called" in missing.text
