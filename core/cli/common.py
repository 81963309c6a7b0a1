"""What every command group shares: the workspace opened before any work, strict JSON output, the deciding
person's password checked, and an estimate written with what it rests on."""
from __future__ import annotations

import json
import os
import sys

EXIT_ERROR = 1


def open_ws(args):
    """The workspace, its database opened before any work: one this Evolab cannot use is refused in one line."""
    import duckdb

    from core.store import SchemaError
    from core.workspace import WorkspaceError, open_workspace

    ws = open_workspace(args.workspace)
    try:
        ws.store.migrate()
    except (duckdb.Error, SchemaError) as err:  # a corrupt file; a schema newer than this code
        raise WorkspaceError(f"workspace database {ws.db} cannot be used: {str(err).splitlines()[0]}") from None
    return ws


def print_json(value) -> None:
    """Every --json output: strict JSON (jq and browsers refuse NaN), so NaN, NaT and infinity print as null."""
    import math

    import pandas as pd

    def strict(v):
        if hasattr(v, "tolist"):  # numpy arrays and scalars
            v = v.tolist()
        if isinstance(v, dict):
            return {str(k): strict(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [strict(x) for x in v]
        if isinstance(v, float) and math.isinf(v) or pd.api.types.is_scalar(v) and pd.isna(v):  # NaN, NaT, NA
            return None
        return v

    print(json.dumps(strict(value), indent=2, allow_nan=False,
                     default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))


def _password() -> str:
    """The deciding person's password: from EVOLAB_PASSWORD when set (scripts, CI; announced), else a prompt."""
    import getpass

    if "EVOLAB_PASSWORD" in os.environ:
        print("using the password in EVOLAB_PASSWORD", file=sys.stderr)
        return os.environ["EVOLAB_PASSWORD"]
    return getpass.getpass("password: ")


def principal(ws, name: str | None, action: str):
    """Whoever --by names, with their password checked (None when --by is not given)."""
    from core import auth

    return auth.authenticate(ws.store, name, _password(), action) if name else None


def estimate_text(est: dict) -> str:
    """An estimate with its interval and what it rests on (traffic.rests_on)."""
    from core import traffic

    return f"{est['accuracy']:.4f} (95% CI {est['ci_low']:.4f}-{est['ci_high']:.4f}, {traffic.rests_on(est)})"
