"""`init`: a workspace from CSV files or a preset skill."""
from __future__ import annotations

from pathlib import Path


def cmd_init(args) -> int:
    from core.actions import make_autonomous
    from core.config import Config
    from core.setup import init_workspace

    config = Config()
    if args.policy == "auto":
        make_autonomous(config)  # recorded: the initial config.toml and its audit entry say so
    if args.preset:
        from core.presets import init_preset

        if args.labeled or args.unlabeled or args.heldout:
            raise ValueError(f"--preset {args.preset} brings its own data: leave out --labeled/--unlabeled/--heldout")
        ws, notes = init_preset(Path(args.workspace), args.preset, config, args.base_model,
                                guardrails=Path(args.guardrails) if args.guardrails else None)
        for note in notes:
            print(note)
    elif not args.labeled:
        raise ValueError("init needs --labeled FILE.csv (or --preset NAME)")
    else:
        ws = init_workspace(Path(args.workspace), Path(args.labeled), Path(args.unlabeled) if args.unlabeled else None,
                            Path(args.heldout) if args.heldout else None, args.text_col, args.label_col,
                            args.base_model, config=config,
                            guardrails=Path(args.guardrails) if args.guardrails else None)
    counts = ws.store.datasets().set_index("split")["n_rows"].to_dict()
    print(f"workspace {ws.root}: {len(ws.store.labels())} labels, "
          + ", ".join(f"{n:,} {split}" for split, n in counts.items()))
    if args.policy == "auto":
        print("every gate is automatic: each decides by its own checks, recorded in the audit log")
    print(f"next: python -m core evolve --workspace {ws.root}")
    return 0


def register(add) -> None:
    p = add("init", cmd_init, "create a workspace from labeled (and unlabeled) CSV files")
    p.add_argument("--workspace", required=True)
    p.add_argument("--labeled", help="labeled CSV (required unless --preset)")
    p.add_argument("--preset", help="a skill with its own data and settings: sql-migrations")
    p.add_argument("--unlabeled")
    p.add_argument("--heldout")
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="label")
    p.add_argument("--base-model", help="Hugging Face id or local path (default: the bundled MiniLM)")
    p.add_argument("--guardrails", help="must-hold probes: CSV with text,expected_label[,note]")
    p.add_argument("--policy", choices=["default", "auto"], default="default",
                   help="auto: every gate decides by its own checks, no person waited for (recorded)")
