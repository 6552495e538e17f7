"""testing-ui in a real browser: Debian's chromium, headless, driven by Selenium through Debian's chromedriver
(apt: chromium, chromium-driver; .ci/run installs them). The page runs against real Piper tts and whisper stt
and orchestrator-enhanced on a scripted chat model (as in test_ui.py). Screenshots of each test's last state
go to test-artifacts/screenshots/ (kept by the test run, ignored by git)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from services.common.testing import serve_in_thread
from services.orchestrator_enhanced.testing import ScriptedChatModel, say
from services.testing_ui.app import create_app
from tests.testing_ui.test_ui import SPEECH, orchestrator, speech_urls, ui_settings  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def browser(*extra: str) -> WebDriver:
    for path in (CHROMIUM, CHROMEDRIVER):
        assert Path(path).exists(), f"{path} missing: apt-get install chromium chromium-driver (.ci/run does)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1600", "--use-fake-ui-for-media-stream", *extra):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(driver: WebDriver, what: str, check: Callable[[], object], timeout_s: float = 120) -> object:
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        try:
            if value := check():
                return value
        except WebDriverException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen in {timeout_s} s")


def field(driver: WebDriver, elem_id: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input").get_attribute("value")


@pytest.fixture
def page(tmp_path, speech_urls) -> Iterator[str]:  # noqa: F811 - the fixture imported above
    stt, tts = speech_urls
    model = ScriptedChatModel(script=[say("Paris is the capital of France.")])
    with orchestrator(tmp_path, model, stt, tts, "primary") as url, \
            serve_in_thread(create_app(ui_settings(url))) as ui:
        yield ui


@pytest.fixture
def shot(request) -> Iterator[Callable[[WebDriver], Path]]:
    SHOTS.mkdir(parents=True, exist_ok=True)

    def take(driver: WebDriver) -> Path:
        path = SHOTS / f"{request.node.name}.png"
        driver.save_screenshot(str(path))
        return path

    yield take


def test_a_typed_question_gets_an_answer_and_an_audio_player(page, shot):
    driver = browser()
    try:
        driver.get(page)
        box = wait_for(driver, "the page to load", lambda: driver.find_element(By.CSS_SELECTOR, "#text-in textarea"))
        box.send_keys("What is the capital of France?")
        driver.find_element(By.ID, "send-text").click()
        wait_for(driver, "the answer", lambda: field(driver, "answer") == "Paris is the capital of France.")
        wait_for(driver, "the audio player", lambda: driver.find_elements(By.CSS_SELECTOR, "#spoken audio, "
                                                                          "#spoken [data-testid^=waveform]"))
        assert "Served by: orchestrator-enhanced" in driver.find_element(By.ID, "stages").text
        assert shot(driver).stat().st_size > 10_000
    finally:
        driver.quit()


def test_an_uploaded_wav_gets_a_transcript(page, shot):
    driver = browser()
    try:
        driver.get(page)
        wait_for(driver, "the page to load", lambda: driver.find_element(By.ID, "audio-in"))
        driver.find_element(By.CSS_SELECTOR, "#audio-in button[aria-label='Upload file']").click()
        upload = wait_for(driver, "the file input",
                          lambda: driver.find_element(By.CSS_SELECTOR, "#audio-in input[type=file]"))
        upload.send_keys(str(SPEECH))
        wait_for(driver, "the upload", lambda: driver.find_elements(By.CSS_SELECTOR, "#audio-in audio, "
                                                                    "#audio-in [data-testid^=waveform] button"))
        time.sleep(1)
        driver.find_element(By.ID, "send-voice").click()
        transcript = wait_for(driver, "the transcript", lambda: field(driver, "transcript"))
        assert "forward" in transcript.lower()
        wait_for(driver, "the answer", lambda: field(driver, "answer"))
        shot(driver)
    finally:
        driver.quit()


def test_chromiums_fake_microphone_is_recorded_and_transcribed(page, shot):
    driver = browser("--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={SPEECH}")
    try:
        driver.get(page)
        record = wait_for(driver, "the record button",
                          lambda: driver.find_element(By.CSS_SELECTOR, "#audio-in button.record-button"))
        record.click()
        time.sleep(4)  # the fake device plays the file (2.8 s of "go forward ten meters"), looping
        driver.find_element(By.CSS_SELECTOR, "#audio-in button.stop-button").click()
        time.sleep(1.5)
        driver.find_element(By.ID, "send-voice").click()
        transcript = wait_for(driver, "the transcript", lambda: field(driver, "transcript"))
        assert "forward" in transcript.lower(), transcript
        wait_for(driver, "the answer", lambda: field(driver, "answer"))
        shot(driver)
    finally:
        driver.quit()
