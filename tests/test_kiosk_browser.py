"""The kiosk page in real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium): a typed query shows the highlighted answer line and its section heading, a passage
expands, an absent code says "no entry", an expired capsule says so, the on-screen keyboard
types, the idle reset clears the page, and without JavaScript the form still works.

Set ``EDGE_KIOSK_SCREENSHOT_DIR`` to keep the screenshots (the README shows one)."""

from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="edge serve needs the 'serve' extra (pip install '.[serve]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the 'test' extra)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from .conftest import TINY_DOCS, build_test_capsule  # noqa: E402
from .serving import Device, Server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="Debian's chromium and chromium-driver are not installed "
                                       "(apt-get install chromium chromium-driver; .ci/run does)")
EXPIRES_IN_S = 12  # after the tests before the expired one (about 8 s here), not long after


def _browser(tmp_path: Path, *, javascript: bool = True):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1024,768", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    return webdriver.Chrome(options=options, service=service)


def _screenshot(driver, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("EDGE_KIOSK_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000
    return path


@pytest.fixture(scope="module")
def kiosk(tmp_path_factory, errcodes_capsule):
    """A served device holding the errcodes manual and a capsule that expires soon."""
    tmp = tmp_path_factory.mktemp("kiosk")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    expires_at = now + timedelta(seconds=EXPIRES_IN_S)
    soon = build_test_capsule(TINY_DOCS / "good", tmp / "soon.capsule",
                              keys_dir=errcodes_capsule.publisher_pub_path.parent, name="soon",
                              issued_at=now - timedelta(hours=1), expires_at=expires_at)
    device = Device(tmp / "device", device_key=errcodes_capsule.device_key_path,
                    publisher_pubs=[errcodes_capsule.publisher_pub_path])
    device.install(errcodes_capsule.path, soon.path)
    with Server(device, "--idle-reset", "10", "--title", "PostgreSQL error codes") as server:
        yield server, expires_at


@pytest.fixture
def browser(tmp_path):
    driver = _browser(tmp_path)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _search(driver, text: str) -> None:
    box = driver.find_element(By.ID, "q")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "go").click()


def test_a_typed_code_shows_the_highlighted_answer_and_its_heading(kiosk, browser, tmp_path):
    server, _ = kiosk
    browser.get(server.url)
    # focus is in the search box once the deferred script has run
    WebDriverWait(browser, 10).until(lambda d: d.switch_to.active_element.get_attribute("id") == "q")
    _search(browser, "22P02")
    wait = WebDriverWait(browser, 20)
    answer = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#results .hit .answer")))
    marks = [m.text for m in answer.find_elements(By.TAG_NAME, "mark")]
    assert "22P02" in marks and "invalid_text_representation" in answer.text
    heading = browser.find_element(By.CSS_SELECTOR, "#results .hit .heading").text
    assert "Error Codes" in heading or "›" in heading, heading
    assert browser.current_url.endswith("/?q=22P02")
    chunk = browser.find_element(By.CSS_SELECTOR, "#results .hit .chunk")
    assert not chunk.is_displayed()
    browser.find_element(By.CSS_SELECTOR, "#results .hit summary").click()
    assert chunk.is_displayed() and "22P02" in chunk.text
    _screenshot(browser, "kiosk-answer", tmp_path)


def test_an_absent_code_shows_no_entry(kiosk, browser, tmp_path):
    server, _ = kiosk
    browser.get(server.url)
    _search(browser, "E-9999")
    state = WebDriverWait(browser, 20).until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#results .state")))
    assert state.text == "No entry for E-9999."
    assert not browser.find_elements(By.CSS_SELECTOR, "#results .hit")
    _screenshot(browser, "kiosk-no-entry", tmp_path)


def test_the_on_screen_keyboard_types_and_searches(kiosk, browser):
    server, _ = kiosk
    browser.get(server.url + "?keyboard=1")
    keyboard = browser.find_element(By.ID, "keyboard")
    assert keyboard.is_displayed()
    for key in "42601":
        keyboard.find_element(By.XPATH, f".//button[text()='{key}']").click()
    assert browser.find_element(By.ID, "q").get_attribute("value") == "42601"
    keyboard.find_element(By.XPATH, ".//button[text()='Search']").click()
    answer = WebDriverWait(browser, 20).until(
        EC.visibility_of_element_located((By.CSS_SELECTOR, "#results .hit .answer")))
    assert "syntax_error" in answer.text


def _advance_page_clock(driver, ms: int) -> None:
    """Run the page's timers ``ms`` milliseconds of virtual time ahead, then hold its clock
    (Chromium's DevTools ``Emulation.setVirtualTimePolicy``): the idle timer fires as it would
    after that long, without the test waiting for it."""
    driver.execute_cdp_cmd("Emulation.setVirtualTimePolicy", {"policy": "advance", "budget": ms})
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return true"))  # the budget is spent


def test_idle_reset_returns_to_the_start_screen(kiosk, browser):
    server, _ = kiosk  # served with --idle-reset 10
    browser.get(server.url)
    _search(browser, "22P02")
    WebDriverWait(browser, 20).until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#results .hit")))
    _advance_page_clock(browser, 9_000)
    assert browser.find_elements(By.CSS_SELECTOR, "#results .hit")  # not yet idle long enough
    assert browser.find_element(By.ID, "q").get_attribute("value") == "22P02"
    _advance_page_clock(browser, 2_000)
    WebDriverWait(browser, 5).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#results .hit"))
    assert browser.find_element(By.ID, "q").get_attribute("value") == ""
    assert browser.current_url.rstrip("/") == server.url.rstrip("/")


def test_without_javascript_the_form_posts_and_the_server_renders(kiosk, tmp_path):
    server, _ = kiosk
    driver = _browser(tmp_path, javascript=False)
    try:
        driver.get(server.url)
        assert driver.find_element(By.ID, "keyboard-toggle").is_displayed() is False  # a JavaScript feature
        _search(driver, "invalid_text_representation")
        WebDriverWait(driver, 20).until(EC.url_contains("q=invalid_text_representation"))
        marks = [m.text for m in driver.find_elements(By.CSS_SELECTOR, "#results .answer mark")]
        assert "invalid_text_representation" in marks
    finally:
        driver.quit()


def test_an_expired_capsule_asks_the_visitor_to_ask_staff(kiosk, browser, tmp_path):
    server, expires_at = kiosk
    delay = (expires_at - datetime.now(timezone.utc)).total_seconds() + 1
    if delay > 0:
        time.sleep(delay)
    browser.get(server.url + "?q=reset&capsule=soon")
    state = browser.find_element(By.CSS_SELECTOR, "#results .state")
    assert state.text == "This information has expired. Please ask staff."
    assert "soon" not in state.text and "expired at" not in browser.page_source  # operator detail is not shown
    _screenshot(browser, "kiosk-expired", tmp_path)
    assert any('"refusal": "expired"' in line for line in server.lines)  # ...it is in the log
