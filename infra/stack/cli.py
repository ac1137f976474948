"""``python -m infra.stack run|up|down|status``: the local stack in the foreground, or in the
background with its state in ``<data_dir>/stack.pid`` (``supervise`` is what ``up`` runs)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from infra import trino
from infra.stack.components import Stack
from infra.stack.supervisor import pidfile as stack_pidfile, supervise
from usersignals.settings import REPO_ROOT, load_settings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.stack", description="Run the usersignals local stack.")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run in the foreground with the event generator (Ctrl-C stops)")
    run.add_argument("--rate", type=float, default=1000.0, help="generator events per second")
    run.add_argument("--no-generator", action="store_true")
    run.add_argument("--trino", action="store_true", help="also run Trino over the lake")
    up = sub.add_parser("up", help="start in the background")
    up.add_argument("--generator", action="store_true", help="also run the event generator")
    up.add_argument("--rate", type=float, default=1000.0)
    up.add_argument("--trino", action="store_true", help="also run Trino over the lake")
    sub.add_parser("down", help="stop the background stack")
    sub.add_parser("status", help="is the background stack running?")
    sub.add_parser("supervise", help=argparse.SUPPRESS).add_argument("--generator", action="store_true")
    sub.choices["supervise"].add_argument("--rate", type=float, default=1000.0)
    sub.choices["supervise"].add_argument("--trino", action="store_true")
    args = p.parse_args(argv)
    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    pidfile = stack_pidfile(settings)

    if args.cmd == "run":
        return supervise(Stack(settings, with_generator=not args.no_generator, generator_rate=args.rate,
                               with_trino=args.trino))
    if args.cmd == "supervise":
        return supervise(Stack(settings, with_generator=args.generator, generator_rate=args.rate,
                               with_trino=args.trino), pidfile)
    if args.cmd == "up":
        if pidfile.exists():
            print(f"the stack is already running (state in {pidfile}); `make down` first")
            return 1
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(settings.log_dir / "stack.log", "ab")
        cmd = [sys.executable, "-m", "infra.stack", "supervise", "--rate", str(args.rate)]
        if args.generator:
            cmd.append("--generator")
        if args.trino:
            cmd.append("--trino")
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        wait_s = 240 + (trino.STARTUP_TIMEOUT_S if args.trino else 0)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if pidfile.exists():
                state = json.loads(pidfile.read_text() or "{}")
                if state.get("state") == "ready":
                    print(Stack(settings, with_trino=args.trino).banner())
                    print("stop it with `make down`")
                    return 0
                if state.get("state") == "failed":
                    pidfile.unlink(missing_ok=True)
                    print(f"the stack failed to start: {state.get('error')}")
                    return 1
            if proc.poll() is not None:
                print(f"the stack failed to start; see {settings.log_dir / 'stack.log'}")
                pidfile.unlink(missing_ok=True)
                return 1
            time.sleep(0.5)
        print(f"the stack did not become ready in {wait_s:.0f}s; stopping it")
        os.kill(proc.pid, signal.SIGTERM)
        return 1
    if args.cmd == "down":
        if not pidfile.exists():
            print("the stack is not running")
            return 0
        pid = json.loads(pidfile.read_text() or "{}").get("pid")
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(120):
                    os.kill(pid, 0)
                    time.sleep(0.5)
            except ProcessLookupError:
                pass
        pidfile.unlink(missing_ok=True)
        print("the stack is stopped")
        return 0
    if args.cmd == "status":
        if pidfile.exists():
            print(pidfile.read_text())
            return 0
        print("the stack is not running")
        return 3
    return 2

