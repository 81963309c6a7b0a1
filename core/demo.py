"""The two-command demo: a workspace on the bundled ticket data, a cycle running, the dashboard served."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"


def run_demo(root: Path, cycles: int = 1, port: int = 8501) -> int:
    from core.config import Config
    from core.setup import init_workspace
    from core.workspace import open_workspace

    if not (root / "config.toml").exists():
        config = Config()
        # A person approves promotions in the dashboard; the baseline alone may go straight through.
        config.gates.promotion.policy = "auto_under_thresholds"
        config.gates.promotion.auto_min_gain = 1.0
        init_workspace(root, DATA / "tickets_labeled.csv", DATA / "tickets_unlabeled.csv",
                       DATA / "tickets_heldout.csv", config=config)
        print(f"created demo workspace {root}")
    ws = open_workspace(root)
    engine = subprocess.Popen([sys.executable, "-m", "core", "evolve", "--workspace", str(root), "--cycles",
                               str(cycles), "--wait"])
    ui = Path(__file__).resolve().parent.parent / "app" / "main.py"
    if not ui.exists():
        return engine.wait()
    try:
        return subprocess.call([sys.executable, "-m", "streamlit", "run", str(ui), "--server.port", str(port),
                                "--server.headless", "true", "--", "--workspace", str(ws.root)])
    finally:
        engine.terminate()
