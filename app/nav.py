"""The dashboard's pages in menu order: name -> (script relative to app/main.py, title, icon)."""
from __future__ import annotations

PAGES: dict[str, tuple[str, str, str]] = {
    "overview": ("../pages/overview.py", "Overview", ":material/dashboard:"),
    "training": ("../pages/training.py", "Training", ":material/monitoring:"),
    "diagnosis": ("../pages/diagnosis.py", "Diagnosis", ":material/troubleshoot:"),
    "synthetic_data": ("../pages/synthetic_data.py", "Synthetic data", ":material/dataset:"),
    "approvals": ("../pages/approvals.py", "Approvals", ":material/gavel:"),
    "scaffolds": ("../pages/scaffolds.py", "Scaffolds", ":material/account_tree:"),
    "models": ("../pages/models.py", "Models", ":material/deployed_code:"),
    "audit": ("../pages/audit.py", "Audit", ":material/history:"),
}


def path(name: str) -> str:
    """For st.page_link: resolved against the entry script's folder, like st.Page."""
    return PAGES[name][0]
