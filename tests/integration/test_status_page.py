"""The status page at GET / in Debian's headless chromium (driven through chromium-driver
by selenium), served by `spin up`: the token prompt, a refused token, the table grouped
by team with a failing account marked, the token kept only in the tab's sessionStorage,
no request or script the page's Content-Security-Policy refuses, and the page refreshing
itself. A screenshot is kept in target/test-artifacts/."""

import os
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from observe import ARTIFACTS, METRICS_TOKEN, Deployment, poll

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN_KEY = "concourse-sts-token"
# The page asks again every 30 s.
REFRESH_S = 30


@pytest.fixture
def browser(tmp_path):
    """Debian's chromium, headless, with a profile of its own and no network of its own
    (the flags the machine notes give: no background requests to the closed network)."""
    for program in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(program), f"{program} is missing: scripts/test installs Debian's chromium and chromium-driver"
    # Selenium must not look for (or download) a driver of its own.
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1280,720",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, what, timeout=30):
    return poll(condition, what, timeout, shows=lambda: f"the page shows:\n{driver.find_element(By.TAG_NAME, 'body').text}")


def shown(driver, element_id):
    return driver.find_element(By.ID, element_id).is_displayed()


def enter(driver, token):
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()


def row(driver, team, account):
    return driver.find_element(By.CSS_SELECTOR, f'tr.account[data-team="{team}"][data-account="{account}"]')


def cells(element):
    return [cell.text for cell in element.find_elements(By.TAG_NAME, "td")]


def test_the_status_page_in_a_real_browser(aws, browser):
    deployment = Deployment(aws, broken=True)
    try:
        deployment.rotate()
        status, headers, page = deployment.get("/", token=None)
        assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        assert headers["Content-Security-Policy"].startswith("default-src 'none'")

        # Without a token: the prompt, nothing of the deployment.
        browser.get(deployment.url + "/")
        wait(browser, lambda: shown(browser, "login"), "token prompt")
        assert not shown(browser, "status") and not shown(browser, "refused")
        assert browser.find_elements(By.CSS_SELECTOR, "tr.account") == []

        # A wrong token: refused (the API's 401), asked again, not kept.
        enter(browser, "not-the-token")
        wait(browser, lambda: shown(browser, "refused"), "the refusal")
        assert browser.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')") is None

        # The metrics token: every team and account, grouped by team.
        enter(browser, METRICS_TOKEN)
        wait(browser, lambda: shown(browser, "status"), "the status table")
        teams = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "tr.team th")]
        assert teams[:2] == ["alpha", "gamma"] and teams[2].startswith("broken: invalid team document"), teams
        order = [(r.get_attribute("data-team"), r.get_attribute("data-account")) for r in browser.find_elements(By.CSS_SELECTOR, "tbody tr")]
        assert order == [("alpha", None), ("alpha", "dev"), ("alpha", "prod"), ("gamma", None), ("gamma", "denied"), ("broken", None)]
        assert "invalid" in browser.find_element(By.CSS_SELECTOR, 'tr.team[data-team="broken"]').get_attribute("class")

        denied = row(browser, "gamma", "denied")
        assert "failing" in denied.get_attribute("class").split()
        name, left, last, _, state, error = cells(denied)
        assert (name, left, last, state) == ("denied", "", "never", "failing")
        assert error.startswith("permanent: AccessDenied (HTTP 403): "), error

        dev = row(browser, "alpha", "dev")
        assert "fresh" in dev.get_attribute("class").split()
        name, left, last, next_rotation, state, error = cells(dev)
        assert (name, state, error) == ("dev", "fresh", "")
        assert left.endswith("min") and last.endswith("ago") and next_rotation.startswith("in "), cells(dev)
        bar = dev.find_element(By.TAG_NAME, "meter")
        assert 3000 < float(bar.get_attribute("value")) <= float(bar.get_attribute("max")) <= 3600

        # The token lives in this tab's sessionStorage only, never in the page.
        assert browser.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')") == METRICS_TOKEN
        assert browser.execute_script("return localStorage.length") == 0
        assert browser.get_cookies() == []
        assert METRICS_TOKEN not in browser.page_source
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "status-page.png"))

        # It refreshes itself: gamma repaired behind its back shows within a period.
        deployment.repair()
        assert deployment.rotate("gamma")[0] == 200
        wait(browser, lambda: "fresh" in row(browser, "gamma", "denied").get_attribute("class").split(), "gamma refreshed", REFRESH_S + 15)

        # A token that stops working (rotated by the operator) brings the prompt back.
        browser.execute_script(f"sessionStorage.setItem('{TOKEN_KEY}', 'revoked'); load();")
        wait(browser, lambda: shown(browser, "refused"), "the prompt after a 401")
        assert not shown(browser, "status")
        assert browser.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')") is None

        kept = browser.page_source
        logs = browser.get_log("browser")
    finally:
        deployment.stop()
    aws.outputs.append(kept)
    refused = [entry["message"] for entry in logs if "Content Security Policy" in entry["message"]]
    assert refused == [], refused
