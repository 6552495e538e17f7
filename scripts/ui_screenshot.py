"""Screenshot of a real turn in the testing UI, as a developer sees it: the `make run` fleet (real models),
Debian's chromium headless (Selenium + chromedriver), a spoken question uploaded as a WAV and sent.

The question is spoken by the fleet's own Piper tts (POST /synthesize), so nothing outside the fleet is needed.
Prints the transcript, the answer and the stage view, and writes the screenshot (docs/images/testing-ui.png).

    make run   # in another terminal
    .venv/bin/python scripts/ui_screenshot.py --question "What is twelve times seven?"
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

ROOT = Path(__file__).resolve().parents[1]


def wait_for(what: str, check: Callable[[], object], timeout_s: float) -> object:
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        try:
            if value := check():
                return value
        except WebDriverException:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{what} did not happen in {timeout_s:.0f} s")


def field(driver: WebDriver, elem_id: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input").get_attribute("value") or ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ui", default="http://127.0.0.1:8080")
    ap.add_argument("--tts", default="http://127.0.0.1:7000", help="Piper tts that speaks the question")
    ap.add_argument("--question", default="What is twelve times seven?")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "testing-ui.png")
    ap.add_argument("--timeout", type=float, default=180)
    args = ap.parse_args()

    r = httpx.post(args.tts.rstrip("/") + "/synthesize", json={"text": args.question, "format": "wav"}, timeout=60)
    r.raise_for_status()
    wav = Path(tempfile.mkdtemp()) / "question.wav"
    wav.write_bytes(r.content)

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1700"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    try:
        driver.get(args.ui)
        wait_for("the page to load", lambda: driver.find_element(By.ID, "audio-in"), 60)
        driver.find_element(By.CSS_SELECTOR, "#audio-in button[aria-label='Upload file']").click()
        upload = wait_for("the file input", lambda: driver.find_element(By.CSS_SELECTOR, "#audio-in input[type=file]"), 30)
        upload.send_keys(str(wav))
        wait_for("the upload", lambda: driver.find_elements(By.CSS_SELECTOR, "#audio-in audio, "
                                                             "#audio-in [data-testid^=waveform] button"), 30)
        time.sleep(1)
        started = time.monotonic()
        driver.find_element(By.ID, "send-voice").click()
        wait_for("the answer", lambda: field(driver, "answer"), args.timeout)
        wait_for("the timings", lambda: "total" in driver.find_element(By.ID, "timings").text, args.timeout)
        time.sleep(2)
        print(f"turn shown after {time.monotonic() - started:.1f} s")
        print("transcript:", field(driver, "transcript"))
        print("answer:", field(driver, "answer"))
        print(driver.find_element(By.ID, "stages").text)
        print(driver.find_element(By.ID, "timings").text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return Math.max(document.body.scrollHeight, "
                                       "document.documentElement.scrollHeight, "
                                       "document.querySelector('gradio-app')?.scrollHeight || 0)")
        driver.set_window_size(1400, max(1000, min(int(height) + 120, 2600)))
        wait_for("the spoken answer's waveform", lambda: driver.execute_script(
            "const a = document.querySelector('#spoken audio'); return a && isFinite(a.duration) && a.duration > 0"), 30)
        time.sleep(1)
        driver.save_screenshot(str(args.out))
        print("screenshot:", args.out)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
