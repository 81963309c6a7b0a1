"""The two-command demo: a workspace on the bundled ticket data, a cycle running, the dashboard served."""
from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys
from pathlib import Path

from core import atomic

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
UI = REPO / "app" / "main.py"


def _stop_on_sigterm() -> None:
    # SIGTERM would end Python without running `finally`, leaving the engine and the UI orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def exposure_warning(host: str, what: str = "the dashboard",
                     guard: str = "sign-in protects it, but passwords and data") -> str | None:
    """One line for stderr when `what` will be reachable from other machines (not a loopback address)."""
    name = host.strip().strip("[]").lower()
    try:
        if name == "localhost" or ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:  # a host name other than localhost: it may resolve to anything
        pass
    return (f"warning: {what} listens on {host}, so it is reachable from the network; {guard} travel in clear "
            "text: put a TLS proxy in front of it")


def serve_dashboard(root: Path, port: int = 8501, host: str = "127.0.0.1") -> int:
    """Run Streamlit in the foreground; the dashboard only reads the store and acts through core."""
    warning = exposure_warning(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    _stop_on_sigterm()
    ui = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(UI), "--server.port", str(port),
                           "--server.address", host, "--server.headless", "true",
                           "--browser.gatherUsageStats", "false",
                           # a product, not a dev server: no Deploy button, no developer menu
                           "--client.toolbarMode", "viewer", "--", "--workspace", str(Path(root).resolve())],
                          cwd=UI.parents[1])  # the repository root: Streamlit reads .streamlit/config.toml (themes) there
    try:
        return ui.wait()
    finally:
        if ui.poll() is None:
            ui.terminate()
            ui.wait(timeout=30)


def write_templates(path: Path) -> None:
    """The demo domain's templates and slots, for the template generator: a bank written apart from the
    templates that wrote the demo's data, so the generator does not write held-out or traffic rows."""
    sys.path.insert(0, str(REPO))
    from data.ticket_templates import templates_json

    atomic.write_json(path, templates_json(), indent=1)


def run_demo(root: Path | None = None, cycles: int = 1, port: int = 8501, preset: str | None = None) -> int:
    from core.config import Config
    from core.presets import PRESETS, init_preset
    from core.setup import init_workspace
    from core.workspace import open_workspace

    if preset and preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)})")
    root = Path(root or (f"demo-{preset}" if preset else "demo-workspace"))
    if not (root / "config.toml").exists():
        config = Config()
        # The baseline goes straight to production (nothing to compare it with); every later
        # promotion waits for a person in the approvals inbox.
        config.gates.promotion.policy = "auto_under_thresholds"
        config.gates.promotion.auto_min_gain = 1.0
        # Each later cycle asks a person to label ten traffic rows where candidate and production disagree
        # (the label queue, first on the Overview) before its gate opens; they grade, never train.
        config.gates.traffic_labels_per_cycle = 10
        if preset:
            ws, notes = init_preset(root, preset, config)
            print("\n".join(notes))
        else:
            ws = init_workspace(root, DATA / "tickets_labeled.csv", DATA / "tickets_unlabeled.csv",
                                DATA / "tickets_heldout.csv", config=config)
            write_templates(ws.root / config.curate.templates_file)
        print(f"created demo workspace {root}")
    ws = open_workspace(root)
    _stop_on_sigterm()
    engine = subprocess.Popen([sys.executable, "-m", "core", "evolve", "--workspace", str(ws.root), "--cycles",
                               str(cycles), "--wait"])
    if not UI.exists():
        return engine.wait()
    print(f"dashboard: http://127.0.0.1:{port}  (the engine runs beside it; Ctrl+C stops both)")
    try:
        return serve_dashboard(ws.root, port)
    finally:
        engine.terminate()
