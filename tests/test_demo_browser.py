"""python -m qmdd.demo end to end in a real headless browser: the system's Chromium, driven by
Selenium through the system's chromedriver (nothing is downloaded). The test starts the
demo, uploads an image, a video and a bad file, and reads the verdict off the page.

Set QMDD_DEMO_SCREENSHOT=docs/img/demo.png to also save a screenshot of the video result,
and QMDD_DEMO_MODEL=<checkpoint> to serve that detector instead of the tiny untrained one.
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

sys.path.insert(0, str(Path(__file__).resolve().parent / "video"))

from face_clips import PHOTOS, make_face_clip, make_tiny_detector  # noqa: E402

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and chromedriver on PATH (.ci/run installs them: apt-get install chromium chromium-driver)",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("demo")
    checkpoint = Path(os.environ["QMDD_DEMO_MODEL"]) if os.environ.get("QMDD_DEMO_MODEL") else make_tiny_detector(folder / "detector")[0]
    (folder / "notes.txt").write_text("not a picture")
    return {"model": checkpoint, "video": make_face_clip(folder / "clip.mp4", frames=16), "image": PHOTOS / "astronaut.jpg", "bad": folder / "notes.txt"}


@pytest.fixture(scope="module")
def server(files):
    port = _free_port()
    command = [sys.executable, "-m", "qmdd.demo", "--model", str(files["model"]), "--port", str(port), "--threads", "1", "--set", "every_n=4", "--max-frames", "6"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the demo did not start: {process.stdout.read()}")
            time.sleep(0.3)
    yield url
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    previous = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,1500"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    if previous is None:
        os.environ.pop("SE_OFFLINE", None)
    else:
        os.environ["SE_OFFLINE"] = previous


def _upload(browser, url: str, path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    browser.find_element(By.ID, "file").send_keys(str(path))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 90).until(
        lambda d: d.find_element(By.ID, "error").text or d.find_element(By.ID, "result").is_displayed()
    )


def test_image_upload_shows_the_library_verdict(server, browser, files):
    from selenium.webdriver.common.by import By

    from qmdd.video import analyse_image, load_scorer, load_settings

    _upload(browser, server, files["image"])
    expected = analyse_image(files["image"], load_scorer(files["model"]), load_settings(None, ["every_n=4"]))
    assert browser.find_element(By.ID, "error").text == ""
    assert browser.find_element(By.ID, "verdict").text == expected.verdict
    assert browser.find_element(By.ID, "score").text == f"{expected.score:.3f}"
    assert len(browser.find_elements(By.CSS_SELECTOR, "figure.frame img")) == 1


def test_video_upload_shows_verdict_and_every_sampled_frame(server, browser, files):
    from selenium.webdriver.common.by import By

    from qmdd.video import analyse_video, load_scorer, load_settings

    _upload(browser, server, files["video"])
    report = analyse_video(files["video"], load_scorer(files["model"]), load_settings(None, ["every_n=4", "max_frames=6"]))
    assert browser.find_element(By.ID, "verdict").text == report.verdict.verdict
    assert browser.find_element(By.ID, "score").text == f"{report.verdict.mean_score:.3f}"
    captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "figure.frame figcaption")]
    assert captions == [f"frame {f.index} at {f.time:.2f} s: score {f.score:.3f}" for f in report.frames]
    images = browser.find_elements(By.CSS_SELECTOR, "figure.frame img")
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 480 for img in images)
    if os.environ.get("QMDD_DEMO_SCREENSHOT"):
        browser.save_screenshot(os.environ["QMDD_DEMO_SCREENSHOT"])


def test_a_bad_upload_shows_a_sentence_not_a_traceback(server, browser, files):
    from selenium.webdriver.common.by import By

    _upload(browser, server, files["bad"])
    error = browser.find_element(By.ID, "error").text
    assert "notes.txt: not a supported type" in error and "Traceback" not in error
    assert not browser.find_element(By.ID, "result").is_displayed()
