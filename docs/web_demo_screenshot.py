"""Make ``docs/web-demo.png``: the web demo on ``make demo``'s runs, used as a person would, in headless Chromium.

    python -m eval.index build --checkpoint runs/clip-shapes-demo --dataset shapes --out runs/index-shapes-demo
    python docs/web_demo_screenshot.py [--unclip runs/unclip-demo] [--index runs/index-shapes-demo] [--out PATH]

Starts ``python -m multimodal.web`` on a free port, then in Debian's Chromium (``apt-get install chromium
chromium-driver``) types a prompt and generates, classifies one of the shapes test images against typed labels and
searches the index by text, and saves the page. Prints what the page showed.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1360,1180")


def a_test_image(path: Path) -> str:
    """Save the first shapes test image (at 128 px) to ``path``; return its caption."""
    import webdataset as wds

    from multimodal.data import load_card

    card = load_card("shapes")
    sample = next(iter(wds.WebDataset(card.shard_urls("test"), shardshuffle=False)))
    from PIL import Image

    Image.open(io.BytesIO(sample[card.image_key])).resize((128, 128), Image.NEAREST).save(path)
    return sample["txt"].decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unclip", default="runs/unclip-demo")
    parser.add_argument("--index", default="runs/index-shapes-demo")
    parser.add_argument("--prompt", default="a red circle")
    parser.add_argument("--out", default="docs/web-demo.png")
    args = parser.parse_args()
    from training.launch import free_port

    port, work = free_port(), Path(tempfile.mkdtemp())
    command = [sys.executable, "-m", "multimodal.web", "--unclip", args.unclip, "--index", args.index]
    server = subprocess.Popen([*command, "--port", str(port), "--threads", "1"], cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{url}/api/info", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in (*FLAGS, f"--user-data-dir={work / 'profile'}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        wait = WebDriverWait(driver, 300, poll_frequency=0.2)
        try:
            driver.get(url)
            wait.until(lambda d: d.find_element(By.ID, "sources").text.startswith("unCLIP: "))

            def fill(element: str, value: str) -> None:
                field = driver.find_element(By.ID, element)
                field.clear()
                field.send_keys(value)

            fill("prompt", args.prompt)
            fill("n", "6")
            driver.find_element(By.ID, "gen-button").click()
            wait.until(lambda d: d.find_element(By.ID, "gen-status").text.startswith("done"))
            caption = a_test_image(work / "test-image.png")
            driver.find_element(By.ID, "zs-image").send_keys(str(work / "test-image.png"))
            fill("zs-labels", "purple star, purple diamond, yellow star, red circle, blue triangle, green square")
            driver.find_element(By.ID, "zs-button").click()
            wait.until(lambda d: d.find_element(By.ID, "zs-table").is_displayed())
            fill("search-text", "a blue triangle")
            driver.find_element(By.ID, "search-button").click()
            wait.until(lambda d: d.find_element(By.ID, "search-table").is_displayed())
            print(f"generation: {driver.find_element(By.ID, 'gen-status').text}")
            print(f"zero-shot on a test image captioned {caption!r}:")
            print(driver.find_element(By.ID, "zs-table").text)
            print("search 'a blue triangle':")
            print(driver.find_element(By.ID, "search-table").text)
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1360, max(900, height + 40))
            Path(args.out).write_bytes(driver.get_screenshot_as_png())
            print(f"wrote {args.out}")
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
