"""The demo page in a real browser: `python -m multimodal.web` on a tiny unCLIP pipeline, driven through Debian's
headless Chromium and chromedriver (selenium; Selenium Manager never runs, so nothing is downloaded). Typing a prompt
and clicking Generate shows the decoded images; an empty prompt, too many images and a file that is not an image show
the server's one-line message on the page; an uploaded image gets its zero-shot table. With WEB_DEMO_SCREENSHOT=PATH
the page is saved there as a PNG at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from multimodal.io import atomic_write_bytes
from tests.conftest import REPO
from tests.web.test_app import IMAGE_SIZE, LABELS, png_bytes, red_circle, save_tiny_unclip
from training.launch import free_port

pytestmark = pytest.mark.browser

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is absent: apt-get install -y chromium chromium-driver (make test-browser does)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402 - only where there is a browser to drive
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROME_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1360,900",
)  # fmt: skip
SCREENSHOT = "WEB_DEMO_SCREENSHOT"


def serve(unclip: Path, port: int, *, timeout: float = 180.0) -> subprocess.Popen:
    """``python -m multimodal.web`` on ``unclip`` at ``port``, once /api/info answers."""
    command = [sys.executable, "-m", "multimodal.web", "--unclip", str(unclip), "--port", str(port), "--threads", "1"]
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the demo server exited with {server.returncode}: {server.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5) as response:
                json.load(response)
            return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    server.kill()
    raise AssertionError(f"the demo server did not answer within {timeout} s: {server.communicate()[0][-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    process = serve(save_tiny_unclip(tmp_path_factory.mktemp("web") / "unclip"), port)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.stdout.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def text_of(driver: webdriver.Chrome, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def fill(driver: webdriver.Chrome, element_id: str, value: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def test_generate_errors_and_zeroshot_on_the_page(server: str, browser: webdriver.Chrome, tmp_path: Path) -> None:
    browser.get(server)
    wait = WebDriverWait(browser, 120, poll_frequency=0.1)
    wait.until(lambda d: text_of(d, "sources").startswith("unCLIP: "))
    assert f"{IMAGE_SIZE} px images (prior → decoder → upsampler)" in text_of(browser, "sources")
    assert not browser.find_element(By.ID, "search-panel").is_displayed()  # no --index, no search panel

    # an empty prompt: the server's message, on the page
    browser.find_element(By.ID, "gen-button").click()
    wait.until(lambda d: text_of(d, "gen-error"))
    assert text_of(browser, "gen-error") == "the prompt is empty: type what to draw, e.g. 'a red circle'"

    # far more images than the server allows (--max-images, 16 by default): its message, and no images
    fill(browser, "prompt", "a red circle")
    fill(browser, "n", "5000")
    browser.find_element(By.ID, "gen-button").click()
    wait.until(lambda d: "5000" in text_of(d, "gen-error"))
    assert text_of(browser, "gen-error") == "the number of images must be from 1 to 16, got 5000"
    assert browser.find_elements(By.CSS_SELECTOR, "#gen-images img") == []

    # a prompt: three decoded images of the pipeline's size
    fill(browser, "n", "3")
    fill(browser, "steps", "3")
    fill(browser, "seed", "5")
    browser.find_element(By.ID, "gen-button").click()
    images = (
        "return [...document.querySelectorAll('#gen-images img')].map(i => [i.complete, i.naturalWidth, "
        "i.naturalHeight])"
    )
    wait.until(lambda d: (got := d.execute_script(images)) and len(got) == 3 and all(c for c, _, _ in got))
    assert browser.execute_script(images) == [[True, IMAGE_SIZE, IMAGE_SIZE]] * 3
    assert text_of(browser, "gen-error") == ""
    assert text_of(browser, "gen-status").startswith("done: 3 image(s)")
    assert browser.execute_script("return document.getElementById('gen-bar').value") == 1
    first = browser.find_element(By.CSS_SELECTOR, "#gen-images img")
    assert first.size == {"width": 128, "height": 128}  # 16 px shown at the first whole multiple >= 128

    # zero-shot: a file that is not an image, then a picture
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not an image")
    browser.find_element(By.ID, "zs-image").send_keys(str(not_image))
    browser.find_element(By.ID, "zs-button").click()
    wait.until(lambda d: text_of(d, "zs-error"))
    assert text_of(browser, "zs-error").startswith("'notes.txt' is not an image this demo reads")

    picture = tmp_path / "circle.png"
    picture.write_bytes(png_bytes(red_circle(64)))
    browser.find_element(By.ID, "zs-image").send_keys(str(picture))
    fill(browser, "zs-labels", ", ".join(LABELS))
    browser.find_element(By.ID, "zs-button").click()
    wait.until(lambda d: d.find_element(By.ID, "zs-table").is_displayed())
    rows = [
        [td.text for td in row.find_elements(By.TAG_NAME, "td")[:2]]
        for row in browser.find_elements(By.CSS_SELECTOR, "#zs-table tbody tr")
    ]
    assert sorted(label for label, _ in rows) == sorted(LABELS) and text_of(browser, "zs-error") == ""
    probs = [float(p) for _, p in rows]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=2e-4)

    if os.environ.get(SCREENSHOT):
        atomic_write_bytes(os.environ[SCREENSHOT], browser.get_screenshot_as_png())
