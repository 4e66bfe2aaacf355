"""The pages in a real browser: headless Chromium, driven by Selenium, against a real `ingest
serve` over a small corpus, and over one made by `ingest backfill`. A visitor types words and
presses Enter, follows a result to its transcript, which opens at that chunk, narrows by
channel, and downloads the transcript; on a phone's width nothing runs off the side of the
page."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pysrt
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import Speech, create_database, isolated_environment
from tests.observing import start
from tests.test_backfill import ingest
from tests.test_pages import prepare
from tests.test_search import MODEL, RARE

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def server(pg_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`ingest serve` on a port the system picks, over the pages' corpus: its base URL."""
    url = asyncio.run(create_database(pg_uri))
    asyncio.run(prepare(url))
    env = {
        **isolated_environment(),
        "DATABASE_URL": url,
        "INGEST_EMBEDDING_MODEL": MODEL,
        "INGEST_DEVICE": "cpu",
        "INGEST_DATA_DIR": str(tmp_path_factory.mktemp("data")),
    }
    running = start(env, "serve", "--addr", "127.0.0.1:0")
    try:
        port = running.wait_for_event("api_serving")["port"]
        yield f"http://127.0.0.1:{port}"
    finally:
        running.send_signal(signal.SIGTERM)
        _, err = running.communicate(timeout=30)
        assert "Traceback" not in err, err


def chromium() -> WebDriver:
    """Debian's headless Chromium; its absence fails the tests, with what to install."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"missing {', '.join(missing)}: apt-get install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1000,900")
    options.binary_location = str(CHROMIUM)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, css: str) -> list[WebElement]:
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))
    return driver.find_elements(By.CSS_SELECTOR, css)


def search_for(driver: WebDriver, base: str, words: str) -> list[WebElement]:
    """The search page opened, the words typed into its box (which has the focus) and Enter
    pressed: the results' list items."""
    driver.get(f"{base}/")
    box = driver.find_element(By.ID, "q")
    assert driver.switch_to.active_element == box  # typing starts at once
    box.send_keys(words, Keys.ENTER)
    WebDriverWait(driver, 30).until(lambda d: "q=" in d.current_url)
    return wait_for(driver, "li.result")


def shown_channels(driver: WebDriver) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "li.result .channel")]


def test_words_typed_and_entered_find_the_chunk(browser: WebDriver, server: str) -> None:
    results = search_for(browser, server, "CVE-2024-3094")
    assert parse_qs(urlsplit(browser.current_url).query)["q"] == ["CVE-2024-3094"]
    first = results[0]
    assert first.find_element(By.CSS_SELECTOR, "mark").text == "CVE-2024-3094"
    assert "Talk 15" in first.text and "3:30\u20133:59" in first.text
    play = first.find_element(By.CSS_SELECTOR, "a.play-link")
    assert play.get_attribute("href") == "https://youtu.be/v15?t=210"


def test_a_result_opens_its_transcript_at_the_chunk(browser: WebDriver, server: str) -> None:
    results = search_for(browser, server, "CVE-2024-3094")
    link = results[0].find_element(By.CSS_SELECTOR, "a.transcript-link")
    link.send_keys(Keys.ENTER)  # followed from the keyboard
    WebDriverWait(browser, 30).until(lambda d: "/videos/" in d.current_url)
    assert browser.current_url == f"{server}/videos/v15#chunk-7"
    chunk = wait_for(browser, "#chunk-7")[0]
    assert browser.execute_script("return document.querySelector(':target').id") == "chunk-7"
    assert RARE in chunk.text
    highlighted = browser.execute_script(
        "return getComputedStyle(arguments[0]).backgroundColor", chunk
    )
    assert highlighted == "rgb(255, 246, 204)"  # :target, the chunk the link pointed at
    top = browser.execute_script("return arguments[0].getBoundingClientRect().top", chunk)
    assert 0 <= top < browser.execute_script("return window.innerHeight")  # scrolled to it


def test_a_channel_filter_narrows_the_results(browser: WebDriver, server: str) -> None:
    search_for(browser, server, "a bug in the scheduler")
    assert set(shown_channels(browser)) == {"even", "odd"}
    channel = browser.find_element(By.ID, "channel")
    channel.send_keys("odd", Keys.ENTER)
    WebDriverWait(browser, 30).until(lambda d: "channel=odd" in d.current_url)
    wait_for(browser, "li.result")
    assert shown_channels(browser) == ["odd"] * 10
    assert browser.find_element(By.ID, "channel").get_attribute("value") == "odd"


def test_the_srt_download_is_the_transcript(browser: WebDriver, server: str) -> None:
    browser.get(f"{server}/videos/v15")
    link = browser.find_element(By.LINK_TEXT, "SRT")
    href = str(link.get_attribute("href"))
    assert href == f"{server}/videos/v15/transcript.srt"
    answer = httpx.get(href, timeout=30)
    assert answer.status_code == 200, answer.text
    subtitles = pysrt.from_string(answer.text)
    assert len(subtitles) == 10
    assert RARE in subtitles[7].text and subtitles[7].start.ordinal == 210_500


def test_a_phone_sees_the_page_without_scrolling_sideways(browser: WebDriver, server: str) -> None:
    browser.set_window_size(390, 844)
    try:
        search_for(browser, server, "a memory leak")
        wide = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert wide <= 0
        box = browser.find_element(By.ID, "q").rect
        assert box["width"] > 200  # the query box takes the width it has
    finally:
        browser.set_window_size(1000, 900)


SPOKEN = """WEBVTT

00:00:00.000 --> 00:00:02.000
The zygomorphic orchid needs one bee.

00:00:02.000 --> 00:00:04.500
Its pollen rides on the bee's back.
"""


def test_a_backfilled_folder_is_found_and_read_in_the_browser(
    browser: WebDriver, ingest_env: dict[str, str], speech: Speech, tmp_path: Path
) -> None:
    """A corpus made by `ingest backfill` itself (a talk with its subtitle file beside it, and
    another without): its word found, its transcript opened at the chunk, its source named."""
    folder = tmp_path / "talks"
    folder.mkdir()
    shutil.copy(speech.short, folder / "orchids.wav")
    (folder / "orchids.en.vtt").write_text(SPOKEN)
    shutil.copy(speech.medium, folder / "other.wav")
    done = ingest(ingest_env, "backfill", str(folder))
    assert done.returncode == 0 and "2 done, 0 failed" in done.stdout, done.stderr
    running = start(ingest_env, "serve", "--addr", "127.0.0.1:0")
    try:
        base = f"http://127.0.0.1:{running.wait_for_event('api_serving')['port']}"
        first = search_for(browser, base, "zygomorphic")[0]
        assert first.find_element(By.CSS_SELECTOR, "mark").text == "zygomorphic"
        first.find_element(By.CSS_SELECTOR, "a.transcript-link").send_keys(Keys.ENTER)
        WebDriverWait(browser, 30).until(lambda d: "/videos/" in d.current_url)
        target = urlsplit(browser.current_url).fragment
        chunk = wait_for(browser, f"#{target}")[0]
        assert "zygomorphic orchid" in chunk.text
        assert "subtitle file (orchids.en.vtt)" in browser.find_element(By.TAG_NAME, "main").text
    finally:
        running.send_signal(signal.SIGTERM)
        _, err = running.communicate(timeout=30)
    assert "Traceback" not in err, err
