"""The review page in a real browser: Debian's chromium, headless, driven by selenium through
/usr/bin/chromedriver (selenium-manager never runs, nothing is downloaded). A server runs in this process on
127.0.0.1; the page is given a key, an edited copy is dropped in, and its matches must show."""

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from served import PASTE_BOX, PASTED, pasted_copy

from qkcopy.serve.app import create_app
from qkcopy.serve.auth import KeyRing
from qkcopy.serve.service import open_service

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900")


def browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def review(driver, url: str, key: str, image: Path, timeout: float = 60.0, regions: str = ""):
    """Open the page, enter the key (and `regions`, when given), choose `image`; returns when its match card is
    shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    box = driver.find_element(By.ID, "key")
    box.clear()  # the page fills in the key it remembered
    box.send_keys(key)
    driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", box)
    if regions:
        driver.find_element(By.ID, "regions").send_keys(regions)
    driver.find_element(By.ID, "file").send_keys(str(Path(image).resolve()))
    wait = WebDriverWait(driver, timeout)
    wait.until(ec.presence_of_element_located((By.ID, "match-card")))
    wait.until(lambda d: d.execute_script(  # every thumbnail fetched (with the key) and decoded
        "return [...document.querySelectorAll('#match-card img')].every(i => i.complete && i.naturalWidth > 0)"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#recent li"))
    return driver


@pytest.fixture
def live_server(collection_dir):
    service = open_service(collection_dir, device="cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service, KeyRing(service.collection.store)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    yield f"http://127.0.0.1:{port}", service
    server.should_exit = True
    thread.join(30)
    service.collection.close()


@pytest.mark.skipif(not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
                    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver); "
                           ".ci/run installs them")
def test_review_page_shows_matches_verdict_and_recent(live_server, keys, pictures, tmp_path):
    from selenium.webdriver.common.by import By

    url, service = live_server
    driver = browser(tmp_path / "profile")
    try:
        review(driver, url, keys["read"], pictures["copies"][2])
        card = driver.find_element(By.ID, "match-card")
        assert card.find_element(By.CSS_SELECTOR, "[data-verdict]").get_attribute("data-verdict") == "copy"
        matches = card.find_elements(By.CSS_SELECTOR, ".match")
        assert len(matches) == 5
        best = matches[0]
        assert best.get_attribute("data-id") == "3" and "ref002.jpg" in best.text and "copy" in best.text
        assert "is-copy" in best.get_attribute("class") and "is-copy" not in matches[1].get_attribute("class")
        assert "12 references" in driver.find_element(By.ID, "stats").text
        recent = driver.find_elements(By.CSS_SELECTOR, "#recent li")
        assert "copy2.jpg" in recent[0].text and "#3 ref002.jpg" in recent[0].text
        # a wrong key: the page says so, in words
        driver.execute_script("localStorage.clear()")
        driver.get(url)
        box = driver.find_element(By.ID, "key")
        box.send_keys("qk_wrong")
        driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", box)
        deadline = time.monotonic() + 20
        while "invalid API key" not in driver.find_element(By.ID, "error").text and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "invalid API key" in driver.find_element(By.ID, "error").text
        shot = Path(os.environ.get("QKCOPY_REVIEW_SCREENSHOT", tmp_path / "review.png"))
        assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
    finally:
        driver.quit()


# the drawn region's rectangle and the query image's, on the screen, and the image's own size
GEOMETRY = """const r = document.getElementById('region').getBoundingClientRect();
const q = document.querySelector('#match-card .frame img'), i = q.getBoundingClientRect();
return [r.left - i.left, r.top - i.top, r.right - i.left, r.bottom - i.top, i.width, i.height,
        q.naturalWidth, q.naturalHeight, getComputedStyle(document.getElementById('region')).borderTopWidth];"""


@pytest.mark.skipif(not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
                    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver); "
                           ".ci/run installs them")
def test_review_page_draws_the_matched_region_over_the_query_beside_the_reference(live_server, keys, pictures,
                                                                                  tmp_path):
    """A reference pasted at 50 % into another picture, matched with 8 regions: the page draws the box the API
    returned over the displayed query (scaled to its displayed size), beside that reference's thumbnail."""
    from selenium.webdriver.common.by import By

    from qkcopy.data.regions import box_iou

    url, _ = live_server
    image = pasted_copy(pictures, tmp_path)
    driver = browser(tmp_path / "profile")
    try:
        review(driver, url, keys["read"], image, regions="8")
        card = driver.find_element(By.ID, "match-card")
        mine = card.find_element(By.CSS_SELECTOR, f'.match[data-id="{PASTED + 1}"]')
        box = [int(v) for v in mine.get_attribute("data-box").split(",")]
        assert box_iou([box], [PASTE_BOX])[0, 0] >= 0.5, box  # the API's box, as the page was given it
        mine.click()
        region = driver.find_element(By.ID, "region")
        assert region.get_attribute("data-box") == ",".join(map(str, box)) and region.is_displayed()
        x0, y0, x1, y1, shown_w, shown_h, w, h, border = driver.execute_script(GEOMETRY)
        assert (w, h) == (320, 320) and shown_w > 100 and border == "3px"
        sx, sy = shown_w / w, shown_h / h  # screen pixels per query pixel
        expected = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        assert max(abs(a - b) for a, b in zip((x0, y0, x1, y1), expected)) <= 1.0, ((x0, y0, x1, y1), expected)
        ref = driver.find_element(By.ID, "region-ref")
        driver.execute_script("return arguments[0].decode()", ref)
        assert ref.get_attribute("naturalWidth") not in (None, "0")
        assert driver.execute_script(  # side by side: the reference right of the query
            "return arguments[0].getBoundingClientRect().left >= "
            "document.querySelector('#match-card .frame').getBoundingClientRect().right", ref)
        assert f"ref{PASTED:03d}.jpg" in driver.find_element(By.ID, "region-caption").text
        assert "region" in driver.find_element(By.ID, "region-caption").text
        shot = Path(os.environ.get("QKCOPY_REVIEW_SCREENSHOT", tmp_path / "region.png"))
        assert driver.save_screenshot(str(shot.with_name("region-" + shot.name)))
    finally:
        driver.quit()
