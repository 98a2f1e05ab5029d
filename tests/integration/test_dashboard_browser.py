"""The dashboard in a real browser: Debian's chromium, headless, driven by
selenium through Debian's chromedriver, against a real nvllm process.

Nothing is downloaded: the browser and the driver are the system's (named by
path, so Selenium Manager is never asked for one), SE_OFFLINE forbids it any
network, and the browser runs with a fresh profile and its background
networking off.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.common.selenium_manager import SeleniumManager
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers import require_binary
from tests.integration.conftest import ADMIN_PASSWORD, wait_for

pytestmark = pytest.mark.integration

APPEARS_WITHIN = 2.0  # seconds from a node's registration to its row on the page


@pytest.fixture
def browser(tmp_path, monkeypatch) -> Iterator[WebDriver]:
    chromium = require_binary("chromium")  # /usr/bin/chromium, Debian's
    driver_path = require_binary("chromedriver")  # /usr/bin/chromedriver, from chromium-driver
    monkeypatch.setenv("SE_OFFLINE", "true")

    def no_manager(*_args, **_kwargs):
        raise AssertionError("Selenium Manager was asked for a browser or driver")

    monkeypatch.setattr(SeleniumManager, "binary_paths", no_manager)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     "--disable-dev-shm-usage", "--window-size=1400,900",
                     f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(argument)
    service = DriverService(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


def log_in(driver: WebDriver, base_url: str, username: str, password: str) -> None:
    driver.get(base_url + "/")
    form = WebDriverWait(driver, 10).until(ec.visibility_of_element_located((By.ID, "login-username")))
    form.clear()
    form.send_keys(username)
    driver.find_element(By.ID, "login-password").send_keys(password)
    driver.find_element(By.ID, "login-submit").click()


def row(node_id: str) -> tuple[str, str]:
    return By.CSS_SELECTOR, f'#nodes tr[data-node-id="{node_id}"]'


def test_log_in_watch_a_node_arrive_and_drain_it(start_service, redis_url, browser):
    service = start_service(redis_url, NVLLM_PROBE_INTERVAL="0")
    admin = service.login()

    log_in(browser, service.base_url, "admin", "not-the-password")
    error = WebDriverWait(browser, 10).until(ec.visibility_of_element_located((By.ID, "login-error")))
    WebDriverWait(browser, 5).until(lambda _: error.text)
    assert "Wrong username or password" in error.text
    assert not browser.find_element(By.ID, "board").is_displayed()

    log_in(browser, service.base_url, "admin", ADMIN_PASSWORD)
    WebDriverWait(browser, 10).until(ec.visibility_of_element_located((By.ID, "no-nodes")))
    assert not browser.find_element(By.ID, "aliases-section").is_displayed()  # shown only when aliases exist
    assert browser.get_cookies() == []  # the token is in session storage, sent as a Bearer header
    assert browser.execute_script("return sessionStorage.getItem('nvllm.role')") == "admin"

    service.api("POST", "/api/node/node/register", token=admin, body={
        "node_id": "gpu-07", "node_address": "127.0.0.1", "node_port": 8000, "node_status": "online",
        "models": ["fake-model"], "node_info": {"running": 3, "waiting": 1, "kv_cache": 42},
    })
    registered = time.monotonic()
    WebDriverWait(browser, APPEARS_WITHIN, poll_frequency=0.05).until(ec.presence_of_element_located(row("gpu-07")))
    appeared = time.monotonic() - registered
    assert appeared <= APPEARS_WITHIN
    the_row = browser.find_element(*row("gpu-07"))
    cells = [cell.text for cell in the_row.find_elements(By.TAG_NAME, "td")]
    assert cells[:8] == ["gpu-07", "online", "yes", "yes", "3", "1", "42%", "0"]
    assert "127.0.0.1:8000" in cells
    # Polls update the row in place: the element (and a click on its buttons) survives them.
    polls = browser.execute_script("return document.getElementById('updated').textContent")
    WebDriverWait(browser, 5).until(
        lambda d: d.execute_script("return document.getElementById('updated').textContent") != polls)
    assert browser.find_element(*row("gpu-07")) == the_row

    browser.find_element(By.CSS_SELECTOR, '#nodes button[data-action="drain"][data-node-id="gpu-07"]').click()
    WebDriverWait(browser, 5).until(ec.visibility_of_element_located((By.ID, "confirm-ok"))).click()
    wait_for(lambda: service.api("GET", "/api/node/node/status/gpu-07", token=admin)["node_status"] == "draining",
             5, "the API to report gpu-07 draining")
    WebDriverWait(browser, 5).until(
        lambda d: d.find_element(*row("gpu-07")).find_element(By.CSS_SELECTOR, ".status").text == "draining")
    assert browser.find_elements(By.CSS_SELECTOR, '#nodes button[data-action="undrain"]')
    assert service.api("GET", "/api/node/node/status/gpu-07", token=admin)["routable"] is False


def test_the_user_role_sees_the_fleet_read_only(start_service, redis_url, browser):
    service = start_service(redis_url, NVLLM_PROBE_INTERVAL="0")
    admin = service.login()
    service.api("POST", "/api/user/register", token=admin,
                body={"username": "watcher", "password": "watcher-password-1", "role": "user"})
    service.api("POST", "/api/node/node/register", token=admin, body={
        "node_id": "gpu-01", "node_address": "127.0.0.1", "node_port": 8000, "node_status": "online",
        "models": ["Qwen/Qwen2.5-72B-Instruct"]})
    for alias, listed in (("gpt-4o", True), ("internal-qwen", False)):
        service.api("POST", "/api/alias/set", token=admin,
                    body={"alias": alias, "model": "Qwen/Qwen2.5-72B-Instruct", "listed": listed})

    log_in(browser, service.base_url, "watcher", "watcher-password-1")
    WebDriverWait(browser, 10).until(ec.presence_of_element_located(row("gpu-01")))
    assert browser.find_elements(By.CSS_SELECTOR, "#nodes button") == []
    assert "127.0.0.1" not in browser.find_element(*row("gpu-01")).text  # users see no addresses
    # The aliases, read-only: a user sees the listed one (as GET /v1/models shows it), not the hidden one.
    alias_row = WebDriverWait(browser, 10).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, '#aliases tr[data-alias="gpt-4o"]')))
    assert [cell.text for cell in alias_row.find_elements(By.TAG_NAME, "td")] == [
        "gpt-4o", "Qwen/Qwen2.5-72B-Instruct", "listed", "1"]
    assert browser.find_elements(By.CSS_SELECTOR, '#aliases tr[data-alias="internal-qwen"]') == []
    assert browser.find_elements(By.CSS_SELECTOR, "#aliases-section button, #aliases-section input") == []
    browser.find_element(By.ID, "logout").click()
    WebDriverWait(browser, 5).until(ec.visibility_of_element_located((By.ID, "login-form")))
    assert browser.execute_script("return sessionStorage.getItem('nvllm.token')") is None
