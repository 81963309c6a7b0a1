"""End to end in a real browser: `python -m core ui` served, headless Chromium driven by Selenium.

Sign-in comes first and refuses a wrong password with the one generic message. Then an approver's journey on
a workspace with two cycles: the overview says a gate waits, the gate's evidence on Approvals, its cycle's
samples through the gate's link, back to approve it without typing the password again; the engine resumes and
the overview shows the new production version. The approver then visits the other pages; sign-out returns to
the sign-in form; a viewer sees every page without a control that decides, reviews, rolls back or exports,
where the approver sees them. Every page is screenshotted as a PNG (EVOLAB_SCREENSHOTS or tmp_path). A
Streamlit session lives in one browser tab's connection, so the test moves between pages through the sidebar
and the pages' links, as a person does; loading a URL starts a new session.
Needs Debian's chromium and chromium-driver (`.ci/run` installs them); without them the test fails.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from urllib.parse import urlparse
from pathlib import Path

import pytest

from app import nav
from core.auth import REFUSED
from core.store import Store
from core.workspace import open_workspace
from tests.conftest import APPROVER, PASSWORD, ROOT, VIEWER, VIEWER_PASSWORD, run_cli

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SERVER_TIMEOUT, UI_TIMEOUT = 120, 90
SIGN_IN_TITLE = "Evolab: sign in"
# Every control that acts: none may reach a viewer's screen.
CONTROLS = {"Approve", "Reject", "Override and approve", "Roll back", "Apply",
            "Prepare export of the kept samples matching the filters"}


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

    from selenium.common.exceptions import StaleElementReferenceException

    WebDriverWait(driver, UI_TIMEOUT, poll_frequency=0.5,  # a rerun replaces elements while they are read
                  ignored_exceptions=(StaleElementReferenceException,)).until(ready, f"page {title!r} never rendered")
    # Streamlit shows its running icon only after a moment, so the title can stand alone while the rest of the
    # script still streams in: the page is read once its text and elements stopped changing for 0.5 s (a fixed
    # 1.5 s after every page cost a third of this test; with no wait at all a viewer's page was read before its
    # caption came).
    last, still, deadline = None, 0, time.monotonic() + UI_TIMEOUT
    while still < 2 and time.monotonic() < deadline:
        time.sleep(0.25)
        now = driver.execute_script("return [document.body.innerText, document.getElementsByTagName('*').length]")
        still = still + 1 if now == last else 0
        last = now


def shoot(driver, path: Path) -> bool:
    """A screenshot once the page's charts have drawn (Plotly draws after the script ends; a fixed 1.5 s after
    every page cost a third of this test)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def drawn(d):
        charts = d.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"]')
        return all(c.find_elements(By.CSS_SELECTOR, "svg.main-svg") for c in charts)

    WebDriverWait(driver, UI_TIMEOUT, poll_frequency=0.2).until(drawn, "a chart never drew")
    return driver.save_screenshot(str(path))


def buttons(driver) -> set[str]:
    """The labels of the page's and the sidebar's buttons (form submit and download buttons included; not
    Streamlit's own toolbar, nor icon-only buttons such as a password field's eye)."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] button p, [data-testid="stSidebar"] button p')
    return {p.text.strip() for p in found if p.text.strip()}


def alerts(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [a.text for a in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stAlert"]')]


def type_into(driver, selector: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    field = WebDriverWait(driver, UI_TIMEOUT).until(ec.element_to_be_clickable((By.CSS_SELECTOR, selector)))
    field.click()
    field.send_keys(Keys.CONTROL, "a")  # clear() leaves React's copy of the value behind
    field.send_keys(Keys.DELETE)
    field.send_keys(value)
    field.send_keys(Keys.TAB)  # commit the value before the submit


def click_button(driver, label: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, UI_TIMEOUT).until(ec.element_to_be_clickable(
        (By.XPATH, f'//button[.//p[normalize-space()="{label}"]]'))).click()


def sign_in(driver, name: str, password: str) -> None:
    """Through the real form on the sign-in page."""
    wait_page(driver, SIGN_IN_TITLE)
    type_into(driver, 'input[aria-label="Name"]', name)
    type_into(driver, 'input[aria-label="Password"]', password)
    click_button(driver, "Sign in")


def go(driver, name: str) -> None:
    """To a page through the sidebar's navigation, which keeps the session (a new URL would not)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    _, title, _ = nav.PAGES[name]
    path = urlparse(page_url("", name)).path
    links = WebDriverWait(driver, UI_TIMEOUT).until(
        lambda d: [a for a in d.find_elements(By.CSS_SELECTOR, 'a[data-testid="stSidebarNavLink"]')
                   if urlparse(a.get_attribute("href")).path == path], f"no sidebar link to {path}")
    WebDriverWait(driver, UI_TIMEOUT).until(ec.element_to_be_clickable(links[0])).click()
    wait_page(driver, "Audit log" if name == "audit" else title)


def signed_in_as(driver, name: str, role: str) -> None:
    """The sidebar names who is signed in, with the role, next to the sign-out button."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, UI_TIMEOUT, poll_frequency=0.5,
                  ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
        lambda d: f"Signed in as {name} ({role})" in d.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text
        and "Sign out" in buttons(d), f"the sidebar never said {name} ({role}) was signed in")


def visit(driver, name: str, shots: Path, shot: str | None = None) -> Path:
    """Go to a page through the sidebar, check it rendered whole, and screenshot it."""
    go(driver, name)
    return check_and_shoot(driver, name, shots / f"{shot or name}.png")


def check_and_shoot(driver, name: str, path: Path) -> Path:
    from selenium.webdriver.common.by import By

    errors = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    assert not errors, f"{name}: {errors[0].text[:2000]}"
    assert "Sign out" in buttons(driver), name
    assert shoot(driver, path), path
    return path


def shows_version(driver, version: str) -> bool:
    """The Production metric names this version (alone or with more words around it)."""
    return re.search(rf"\b{version}\b", metric(driver, "Production")) is not None


def metric(driver, label: str) -> str:
    """The value of the first st.metric whose label starts with `label` ("" when none)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        for m in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]'):
            labels = m.find_elements(By.CSS_SELECTOR, '[data-testid="stMetricLabel"]')
            if labels and labels[0].text.strip().startswith(label):
                return m.find_element(By.CSS_SELECTOR, '[data-testid="stMetricValue"]').text.strip()
    except StaleElementReferenceException:  # a rerun replaced the metric while it was read
        pass
    return ""


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def sign_out(driver) -> None:
    """Sign out and wait until the signed-in page is gone: on a loaded machine its sidebar can outlive the
    sign-in form's title for a moment, until the run that draws the form ends."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    click_button(driver, "Sign out")
    wait_page(driver, SIGN_IN_TITLE)
    WebDriverWait(driver, UI_TIMEOUT, poll_frequency=0.5, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: buttons(d) == {"Sign in"}, "the signed-in page stayed after signing out")


@pytest.mark.slow
def test_sign_in_roles_and_approval_in_the_browser(tmp_path, _pending_template):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: `apt-get install -y chromium chromium-driver` "
                    "(.ci/run does it) to run the browser end-to-end test")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    template, gate_id = _pending_template
    root = tmp_path / "ws"
    shutil.copytree(template, root)
    shots = Path(os.environ.get("EVOLAB_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    for name in nav.PAGES:  # a page's screenshot from an earlier run must not pass for this run's
        (shots / f"{name}.png").unlink(missing_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "core", "ui", "--workspace", str(root), "--port", str(port),
                               "--host", "127.0.0.1"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    driver, profile = None, tempfile.mkdtemp(prefix="evolab-chromium-")
    store = Store(open_workspace(root).db)
    try:
        wait_healthy(base, server, SERVER_TIMEOUT)
        driver = make_driver(profile)
        wait = WebDriverWait(driver, UI_TIMEOUT, poll_frequency=0.5)

        # A page's URL shows the sign-in form and nothing of the page.
        driver.get(page_url(base, "approvals"))
        wait_page(driver, SIGN_IN_TITLE)
        assert f"Gate {gate_id}" not in driver.page_source and buttons(driver) == {"Sign in"}
        assert not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNavLink"]')
        # A product, not a dev server: Streamlit's Deploy button is not there.
        assert driver.find_elements(By.CSS_SELECTOR, '[data-testid="stToolbar"]')
        assert not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stAppDeployButton"]')
        shoot(driver, shots / "sign_in.png")

        # A wrong password: the one generic refusal, and still the sign-in form.
        sign_in(driver, APPROVER, "not-the-password")
        wait.until(lambda d: REFUSED in alerts(d), "the refusal never showed")
        assert alerts(driver) == [REFUSED] and buttons(driver) == {"Sign in"}
        shoot(driver, shots / "sign_in_refused.png")

        # The approver's journey. Signed in, the overview: production is the baseline, a gate waits.
        sign_in(driver, APPROVER, PASSWORD)
        signed_in_as(driver, APPROVER, "approver")
        wait_page(driver, nav.PAGES["overview"][1])
        check_and_shoot(driver, "overview", shots / "overview.png")
        assert shows_version(driver, "v1"), metric(driver, "Production")

        # The pending gate's evidence: its checks, the recall of every class, the decision form.
        visit(driver, "approvals", shots)
        cycle = store.gate(gate_id)["cycle_id"]
        source = driver.page_source
        assert f"Gate {gate_id}" in source and "Checks passed" in source and "Per-class recall" in source
        assert len(driver.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]')) >= 2  # guard, recall
        assert {"Approve", "Reject"} <= buttons(driver)

        # Its samples, through the gate's own link: the Synthetic data page opens on the gate's cycle.
        link = f"Read the samples of cycle {cycle}"
        wait.until(lambda d: d.find_elements(By.XPATH, f'//a[@data-testid="stPageLink-NavLink"][contains(., "{link}")]'),
                   "the gate has no link to its samples")[0].click()
        wait_page(driver, nav.PAGES["synthetic_data"][1])
        check_and_shoot(driver, "synthetic_data", shots / "synthetic_data.png")
        n = len(store.samples(cycle_id=cycle))
        assert f"{n:,} matching samples" in driver.page_source and driver.find_elements(
            By.CSS_SELECTOR, '[data-testid="stDataFrame"]')
        assert {"Apply", "Prepare export of the kept samples matching the filters"} <= buttons(driver)

        # Back to approve it: a comment and one click, no name or password to type again.
        go(driver, "approvals")
        assert not driver.find_elements(By.CSS_SELECTOR, 'input[type="password"]')
        type_into(driver, 'textarea[aria-label="Comment"]', "approved from the browser test")
        click_button(driver, "Approve")
        deadline = time.monotonic() + UI_TIMEOUT
        while (gate := store.gate(gate_id))["status"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert gate["status"] == "approved", gate
        assert (gate["decided_by"], gate["comment"]) == (APPROVER, "approved from the browser test")
        wait.until(lambda d: f"Gate {gate_id} approved by {APPROVER}" in d.page_source,
                   "the page never confirmed the decision")
        shoot(driver, shots / "approvals_decided.png")

        # The engine acts on the decision (an `evolve --wait` would; here `resume`): the overview shows the
        # promotion. Reads are cached for a moment, so come back until the new version shows.
        result = run_cli("resume", "--workspace", str(root), "--quiet", check=True)
        assert result.returncode == 0 and store.alias("production") == "v2"
        deadline = time.monotonic() + UI_TIMEOUT
        while True:
            go(driver, "overview")
            if shows_version(driver, "v2") or time.monotonic() > deadline:
                break
            go(driver, "audit")
        assert shows_version(driver, "v2"), metric(driver, "Production")
        check_and_shoot(driver, "overview", shots / "overview_promoted.png")

        # The other pages render (no exception box) and are screenshotted: every page in the menu has one.
        for name in nav.PAGES:
            if name not in ("overview", "approvals", "synthetic_data"):  # the journey's pages have theirs
                visit(driver, name, shots)
        for name in nav.PAGES:
            assert is_png(shots / f"{name}.png"), shots / f"{name}.png"
        assert is_png(shots / "overview_promoted.png") and is_png(shots / "approvals_decided.png")

        # Sign-out returns to the sign-in form.
        sign_out(driver)
        assert buttons(driver) == {"Sign in"} and f"Gate {gate_id}" not in driver.page_source

        # A viewer reads every page and finds no control that acts.
        sign_in(driver, VIEWER, VIEWER_PASSWORD)
        signed_in_as(driver, VIEWER, "viewer")
        for name in nav.PAGES:
            go(driver, name)
            assert not buttons(driver) & CONTROLS, (name, buttons(driver) & CONTROLS)
            assert not driver.find_elements(By.CSS_SELECTOR, 'input[type="password"]'), name
            if name in ("approvals", "models", "synthetic_data"):
                assert f"signed in as {VIEWER} (viewer): read only" in driver.page_source, name
                shoot(driver, shots / f"{name}_viewer.png")
        sign_out(driver)

        # ...where the approver has them: the viewer's empty Models page is not an empty page.
        sign_in(driver, APPROVER, PASSWORD)
        signed_in_as(driver, APPROVER, "approver")
        go(driver, "models")
        # The page's title is drawn before its last elements; under load the button came a moment later (seen once).
        WebDriverWait(driver, UI_TIMEOUT).until(lambda d: "Roll back" in buttons(d), f"no Roll back: {buttons(driver)}")
        assert "Roll back" in buttons(driver)
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
