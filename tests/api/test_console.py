"""The web console (``sked serve`` at ``/``) in a real browser: Debian's chromium driven
by selenium through chromedriver, over real agents and a real scheduler. Signs in with
the token, shows hosts, services and tasks, follows a change made elsewhere without a
reload, refuses a bad token, and a read-only token cannot scale; over two etcd
datacenters, shows every datacenter's rows marked with their datacenter and a banner for
one that stopped answering. Screenshots are kept
under ``$SKED_TEST_ARTIFACTS`` (default: ``test-artifacts/``) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from skedlib.api import ApiServer
from tests.api.conftest import READ_TOKEN, TOKEN, Http, Loop
from tests.api.datacenters import DC_TIMEOUT, TwoDatacenters, two_datacenters
from tests.harness.common import skip_or_fail
from tests.scheduler.conftest import wait_for

pytestmark = pytest.mark.slow

try:
    from selenium import webdriver
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.chrome.service import Service as ChromeService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import Select
except ImportError:  # pragma: no cover - the test extra installs it
    webdriver = None

__all__ = ["two_datacenters"]

ARTIFACTS = Path(os.environ.get("SKED_TEST_ARTIFACTS", "test-artifacts")) / "console"


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """A headless chromium (the system's: no browser is downloaded)."""
    if webdriver is None:
        skip_or_fail("selenium is not installed (pip install -e '.[test]')")
    chromium = _find("chromium", "chromium-browser")
    driver_bin = _find("chromedriver")
    if chromium is None or driver_bin is None:
        skip_or_fail("no chromium/chromedriver (scripts/install-browser.sh installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=ChromeService(executable_path=driver_bin),
                              options=options)
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: WebDriver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _sign_in(driver: WebDriver, base: str, token: str) -> None:
    driver.get(base + "/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(base + "/")
    box = driver.find_element(By.ID, "token")
    box.clear()
    box.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()


def _rows(driver: WebDriver, section: str) -> list[list[str]]:
    """The table's cells, read at once in the page (the live updates replace rows)."""
    rows: list[list[str]] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".map(tr => [...tr.cells].map(td => td.textContent.trim()))",
        f"#{section} tbody tr")
    return rows


def _shown(driver: WebDriver, css: str) -> int:
    """How many elements matching ``css`` are displayed, counted at once in the page (the
    live updates replace them, so a handle found first could be stale when asked)."""
    count: int = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".filter(e => e.getClientRects().length > 0).length", css)
    return count


def _click(driver: WebDriver, css: str) -> str:
    """Click the first element matching ``css`` (again if a live update replaced it);
    its ``data-id``."""
    def once() -> tuple[str] | None:
        try:
            node = driver.find_element(By.CSS_SELECTOR, css)
            found = node.get_attribute("data-id") or ""
            node.click()
        except (StaleElementReferenceException, NoSuchElementException):
            return None
        return (found,)
    result: tuple[str] = wait_for(once, 20, f"to click {css}")
    return result[0]


def _tab(driver: WebDriver, name: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'#tabs button[data-tab="{name}"]').click()


def _base(http: Http) -> str:
    return http.base.removesuffix("/v1")


def test_console_shows_the_cluster_and_follows_changes(
        running: tuple[Loop, Http, Http], browser: WebDriver) -> None:
    loop, admin, _ = running
    base = _base(admin)
    page = requests.get(base + "/", timeout=10)
    assert page.status_code == 200 and "skedlib console" in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]

    _sign_in(browser, base, TOKEN)
    wait_for(lambda: len(_rows(browser, "hosts")) == 3, 20, "the hosts table")
    hosts = {r[0]: r for r in _rows(browser, "hosts")}
    assert set(hosts) == {loop.host(1), loop.host(2), "spare"}
    assert hosts["spare"][1] == "not live" and hosts[loop.host(1)][1] == "live"
    assert "/512" in hosts[loop.host(1)][2]  # the memory bar: allocated/total
    _shot(browser, "hosts")

    _tab(browser, "services")
    wait_for(lambda: _rows(browser, "services")
             and _rows(browser, "services")[0][3:6] == ["3", "3", "3"], 20,
             "web: desired, placed and healthy 3")
    wait_for(lambda: browser.find_element(By.ID, "live").text == "live", 20,
             "the change stream")
    # a change made elsewhere shows up without a reload
    admin.ok("PUT", "/services/web/scale", {"desired": 2})
    wait_for(lambda: _rows(browser, "services")[0][3] == "2", 20,
             "the page to follow the scale")
    loop.wait_healthy("web", 2)
    wait_for(lambda: _rows(browser, "services")[0][5] == "2", 30, "healthy 2 on the page")
    _shot(browser, "services")

    # scaling from the page
    _click(browser, '#services tbody button[title="scale up by one"]')
    wait_for(lambda: admin.ok("GET", "/services/web")["service"]["desired"] == 3, 20,
             "the page's scale to be stored")

    _tab(browser, "tasks")
    wait_for(lambda: len(_rows(browser, "tasks")) >= 2, 20, "the tasks table")
    task_id = _click(browser, "#tasks tbody tr")
    wait_for(lambda: browser.find_element(By.ID, "task-detail-title").text == task_id, 20,
             "the task's details")
    wait_for(lambda: '"service": "web"' in browser.find_element(By.ID, "task-record").text,
             20, "the task's record")
    wait_for(lambda: f"hello from {task_id}" in
             browser.find_element(By.ID, "task-output").text, 20, "the task's output")
    # its events, as the agent and the scheduler recorded them
    wait_for(lambda: "started" in browser.find_element(By.ID, "task-events").text
             and "placed" in browser.find_element(By.ID, "task-events").text, 30,
             "the task's placed and started events")
    box = browser.find_element(By.ID, "task-filter")
    box.send_keys("no-such-task")
    wait_for(lambda: _rows(browser, "tasks") == [], 10, "the filter")
    _shot(browser, "tasks")

    _tab(browser, "jobs")
    wait_for(lambda: "queued" in browser.find_element(By.ID, "job-queue").text, 20,
             "the job queue line")


def test_console_refuses_a_bad_token_and_a_read_only_token_cannot_scale(
        running: tuple[Loop, Http, Http], browser: WebDriver) -> None:
    _, admin, _ = running
    base = _base(admin)
    _sign_in(browser, base, "wrong-token")
    wait_for(lambda: "refused" in browser.find_element(By.ID, "login-error").text, 20,
             "the refusal")
    assert not browser.find_element(By.ID, "login").get_attribute("hidden")
    _shot(browser, "bad-token")

    _sign_in(browser, base, READ_TOKEN)
    _tab(browser, "services")
    wait_for(lambda: len(_rows(browser, "services")) == 1, 20, "the services table")
    _click(browser, '#services tbody button[title="scale up by one"]')
    wait_for(lambda: "read-only" in browser.find_element(By.ID, "error").text, 20,
             "the read-only refusal")
    assert admin.ok("GET", "/services/web")["service"]["desired"] == 3
    _shot(browser, "read-only")


def test_console_shows_every_datacenter_and_the_ones_not_answering(
        two_datacenters: TwoDatacenters, browser: WebDriver) -> None:
    dcs = two_datacenters
    server = ApiServer(dcs.east.client, "127.0.0.1", 0, token=TOKEN,
                       datacenters=dcs.datacenters, dc_timeout=DC_TIMEOUT)
    server.start()
    try:
        base = server.url.removesuffix("/v1")
        _sign_in(browser, base, TOKEN)
        wait_for(lambda: browser.find_element(By.ID, "datacenter").is_displayed(), 20,
                 "the datacenter selector")
        # this server's own store first: no datacenter column, the actions there
        wait_for(lambda: len(_rows(browser, "hosts")) == 1, 20, "east's hosts")
        assert not browser.find_element(By.CSS_SELECTOR, "#hosts th.dc").is_displayed()

        Select(browser.find_element(By.ID, "datacenter")).select_by_value("*")
        wait_for(lambda: sorted((r[0], r[1]) for r in _rows(browser, "hosts")) == [
            ("east", dcs.east.host(1)), ("west", "spare-west")], 20,
            "both datacenters' hosts, marked")
        assert browser.find_element(By.CSS_SELECTOR, "#hosts th.dc").is_displayed()
        assert not browser.find_element(By.ID, "dc-banner").is_displayed()
        _tab(browser, "services")
        wait_for(lambda: sorted((r[0], r[4]) for r in _rows(browser, "services")) == [
            ("east", "2"), ("west", "1")], 20, "web in both datacenters")
        # writes go to this server's store only: no scale buttons in the datacenter view
        assert _shown(browser, "#services tbody button") == 0
        _tab(browser, "tasks")
        wait_for(lambda: [r[0] for r in _rows(browser, "tasks")] == ["east", "east"], 20,
                 "east's tasks, marked")
        _shot(browser, "datacenters")

        # west is cut off: the page keeps showing east and says west does not answer
        dcs.west_etcd.stop()
        wait_for(lambda: browser.find_element(By.ID, "dc-banner").is_displayed(), 30,
                 "the unreachable banner")
        assert browser.find_element(By.ID, "dc-unreachable").text.startswith("west: ")
        assert [r[0] for r in _rows(browser, "tasks")] == ["east", "east"]
        _tab(browser, "services")
        wait_for(lambda: [r[0] for r in _rows(browser, "services")] == ["east"], 20,
                 "only east's services")
        _shot(browser, "datacenter-unreachable")

        # back to this server's own store: no banner, no column
        Select(browser.find_element(By.ID, "datacenter")).select_by_value("")
        wait_for(lambda: not browser.find_element(By.ID, "dc-banner").is_displayed(), 20,
                 "the banner to go")
        assert not browser.find_element(By.CSS_SELECTOR, "#services th.dc").is_displayed()
        wait_for(lambda: [r[0] for r in _rows(browser, "services")] == ["web"], 20,
                 "east's own services")
        wait_for(lambda: _shown(browser, "#services tbody button") == 2, 20,
                 "the scale buttons back")
    finally:
        server.stop()


def test_console_without_datacenters_shows_no_selector(
        running: tuple[Loop, Http, Http], browser: WebDriver) -> None:
    _, admin, _ = running
    _sign_in(browser, _base(admin), TOKEN)
    wait_for(lambda: len(_rows(browser, "hosts")) == 3, 20, "the hosts table")
    assert not browser.find_element(By.ID, "datacenter").is_displayed()
    assert not browser.find_element(By.CSS_SELECTOR, "#hosts th.dc").is_displayed()
