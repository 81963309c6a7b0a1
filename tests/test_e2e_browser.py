"""End to end in a real browser: `python -m core ui` served, headless Chromium driven by Selenium.

An approver approves a pending promotion gate through the Approvals form, the engine resumes, and
production moves to the candidate. Every page is screenshotted (EVOLAB_SCREENSHOTS or tmp_path).
Needs Debian's chromium and chromium-driver (`.ci/run` installs them); without them the test fails.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from app import nav
from core.store import Store
from core.workspace import open_workspace
from tests.conftest import APPROVER, PASSWORD, ROOT, run_cli

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SERVER_TIMEOUT, UI_TIMEOUT = 120, 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"dashboard exited with {server.returncode}:\n{server.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=5) as resp:
                if resp.read().decode().strip() == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"dashboard not healthy at {base} after {timeout:.0f}s")


def page_url(base: str, name: str) -> str:
    """st.Page infers the url path from the script's file name; the default page lives at /."""
    return base + "/" if name == "overview" else f"{base}/{Path(nav.PAGES[name][0]).stem}"


def make_driver(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(UI_TIMEOUT)
    return driver


def wait_page(driver, title: str) -> None:
    """The page's script ran: its st.title is on screen and Streamlit stopped running."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        titles = [e.text for e in d.find_elements(By.CSS_SELECTOR, "h1")]
        running = d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"] [data-testid="stStatusWidgetRunningIcon"]')
        return any(title in t for t in titles) and not running

    WebDriverWait(driver, UI_TIMEOUT, poll_frequency=0.5).until(ready, f"page {title!r} never rendered")
    time.sleep(1.5)  # charts and data frames draw after the script ends


def test_approve_in_the_browser_then_resume_promotes(tmp_path, _pending_template):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: `apt-get install -y chromium chromium-driver` "
                    "(.ci/run does it) to run the browser end-to-end test")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    template, gate_id = _pending_template
    root = tmp_path / "ws"
    shutil.copytree(template, root)
    shots = Path(os.environ.get("EVOLAB_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "core", "ui", "--workspace", str(root), "--port", str(port),
                               "--host", "127.0.0.1"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    driver, profile = None, tempfile.mkdtemp(prefix="evolab-chromium-")
    try:
        wait_healthy(base, server, SERVER_TIMEOUT)
        driver = make_driver(profile)
        wait = WebDriverWait(driver, UI_TIMEOUT, poll_frequency=0.5)

        # Every page renders (no exception box) and is screenshotted.
        for name, (_, title, _) in nav.PAGES.items():
            driver.get(page_url(base, name))
            wait_page(driver, title)
            errors = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
            assert not errors, f"{name}: {errors[0].text[:2000]}"
            shot = shots / f"{name}.png"
            assert driver.save_screenshot(str(shot)), shot
        for name in nav.PAGES:
            shot = shots / f"{name}.png"
            assert shot.is_file() and shot.stat().st_size > 0, shot

        # Approve the gate through the form.
        driver.get(page_url(base, "approvals"))
        wait_page(driver, "Approvals")
        fields = {'input[aria-label="Your name"]': APPROVER, 'input[aria-label="Password"]': PASSWORD,
                  'textarea[aria-label="Comment"]': "approved from the browser test"}
        for selector, value in fields.items():
            field = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, selector)))
            field.click()
            field.clear()
            field.send_keys(value)
            field.send_keys(Keys.TAB)  # commit the value before the submit
        button = wait.until(ec.element_to_be_clickable(
            (By.XPATH, '//div[@data-testid="stFormSubmitButton"]//button[.//p[normalize-space()="Approve"]]')))
        button.click()

        store = Store(open_workspace(root).db)
        deadline = time.monotonic() + UI_TIMEOUT
        while (gate := store.gate(gate_id))["status"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert gate["status"] == "approved", gate
        assert gate["decided_by"] == APPROVER
        wait.until(lambda d: f"Gate {gate_id} approved by {APPROVER}" in d.page_source,
                   "the page never confirmed the decision")
        driver.save_screenshot(str(shots / "approvals_decided.png"))
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)

    result = run_cli("resume", "--workspace", str(root), "--quiet", check=True)
    assert result.returncode == 0
    assert Store(open_workspace(root).db).alias("production") == "v2"
