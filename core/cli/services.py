"""`serve`, `daemon`, `ui` and `demo`: the commands that keep running, the server, the nightly daemon, the
dashboard and the demo."""
from __future__ import annotations

import sys
from pathlib import Path

from core.cli.common import open_ws


def cmd_serve(args) -> int:
    import logging
    import signal

    import uvicorn

    from core.serve.app import Service, create_app
    from core.workspace import require_accepted_config

    from core.demo import exposure_warning

    warning = exposure_warning(args.host, "the server", "/feedback needs an API token (/predict only with "
                                                        "serve.predict_requires_token), but tokens and texts")
    if warning:
        print(warning, file=sys.stderr, flush=True)
    ws = open_ws(args)
    require_accepted_config(ws, "cli")  # serve.predict_requires_token and the scaffold's LLM are governed
    cfg = ws.config().serve
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    service = Service(ws, cfg).start()
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then re-raises the signal to the handler that was
    # there before it; a no-op one here lets the logs flush below and the process exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        print(f"serving {service.predictor.serving.model_version} of {ws.root} on http://{args.host}:{args.port} "
              f"(API docs at /docs)", flush=True)
        uvicorn.run(create_app(service), host=args.host, port=args.port, log_level=args.log_level,
                    access_log=False)
    finally:
        service.close()
        print(f"server stopped; {service.logs.flushed_predictions:,} predictions and "
              f"{service.logs.flushed_feedback:,} corrections logged", flush=True)
    return 0


def cmd_daemon(args) -> int:
    from core import daemon

    ws = open_ws(args)
    return daemon.run(ws, daemon.settings(ws.config().daemon, window=args.window, poll_s=args.poll,
                                          cycles_per_night=args.cycles_per_night, now=args.now))


def cmd_ui(args) -> int:
    from core.demo import serve_dashboard

    ws = open_ws(args)
    return serve_dashboard(ws.root, args.port, args.host)


def cmd_demo(args) -> int:
    from core.demo import run_demo

    return run_demo(Path(args.workspace) if args.workspace else None, cycles=args.cycles, port=args.port, preset=args.preset)


def register(add) -> None:
    p = add("serve", cmd_serve, "serve the production model over HTTP (predict, feedback, metrics)")
    p.add_argument("--workspace", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])

    p = add("daemon", cmd_daemon, "run cycles unattended, only inside the nightly training window")
    p.add_argument("--workspace", required=True)
    p.add_argument("--window", help="HH:MM-HH:MM local time (default: daemon.window in config.toml)")
    p.add_argument("--poll", type=float, help="seconds between checks (default: daemon.poll_s)")
    p.add_argument("--cycles-per-night", type=int)
    p.add_argument("--now", help="pretend the local time is this (HH:MM or an ISO timestamp); for tests and "
                                 "dry runs (also EVOLAB_DAEMON_NOW)")

    p = add("ui", cmd_ui, "serve the dashboard for a workspace")
    p.add_argument("--workspace", required=True)
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--host", default="127.0.0.1")

    p = add("demo", cmd_demo, "create a workspace on the bundled demo data and run a cycle")
    p.add_argument("--workspace", help="default demo-workspace (demo-sql-migrations with --preset sql-migrations)")
    p.add_argument("--cycles", type=int, default=1)
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--preset", help="demo a preset skill instead of ticket routing: sql-migrations")
