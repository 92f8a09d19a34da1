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
from served import collection_dir, collection_template, keys, pictures, trained  # noqa: F401 (fixtures)

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


def review(driver, url: str, key: str, image: Path, timeout: float = 60.0):
    """Open the page, enter the key, choose `image`; returns when its match card is shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    box = driver.find_element(By.ID, "key")
    box.clear()  # the page fills in the key it remembered
    box.send_keys(key)
    driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", box)
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
