"""Process supervision: start a list of components in order, each waited for until its health
check passes; restart one that dies, with backoff; stop them in reverse order (their signal, then
SIGKILL to the whole process group). What the components are is the subclass's ``define()``.

Every child runs in its own process group with cwd at the repository root, logging to
``<log_dir>/<name>.log``. ``supervise()`` is the long-running loop behind ``run`` and ``up``, with
the state file (``stack.pid``) that ``up``, ``down`` and ``status`` read.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from infra.stack.probes import port_open
from usersignals.settings import REPO_ROOT, Settings


def say(msg: str) -> None:
    # stderr: benchmarks and scripts keep stdout for their results.
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


@dataclass
class Component:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    ports: tuple[int, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 30.0
    on_ready: Callable[[], None] | None = None
    before_start: Callable[[], None] | None = None
    restart: bool = True
    stop_timeout_s: float | None = None   # grace before SIGKILL (default: stop()'s)
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_restart_at: float = 0.0


class Supervisor(ABC):
    """Starts, watches and stops the processes that ``define()`` lists."""

    def __init__(self, settings: Settings, env: dict[str, dict[str, str]] | None = None):
        """``env``: extra environment variables by component name (e.g. ``{"api": {...}}``)."""
        self.settings = settings
        self.extra_env = env or {}
        self.components: list[Component] = []
        self.stopping = False
        self.log_dir = self.settings.log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)

    @abstractmethod
    def define(self) -> list[Component]:
        """The components to run, in start order (called by every ``start()``)."""

    @abstractmethod
    def banner(self) -> str:
        """What a person reads once everything is ready: addresses, where the logs are."""

    # --- environment shared by every child ---------------------------------------
    def child_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(s.to_env())
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    # --- lifecycle ----------------------------------------------------------------
    def _spawn(self, c: Component) -> None:
        log = open(self.log_dir / f"{c.name}.log", "ab", buffering=0)
        log.write(f"\n=== {time.strftime('%F %T')} start {' '.join(c.argv)}\n".encode())
        env = self.child_env({**c.env, **self.extra_env.get(c.name, {})})
        c.proc = subprocess.Popen(c.argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def start(self) -> None:
        self.stopping = False
        self.components = self.define()
        for c in self.components:
            for port in c.ports:
                if port_open(self.settings.host, port):
                    self.stop()
                    raise SystemExit(f"port {port} ({c.name}) is already in use: stop what holds it "
                                     f"(`make down`?) or choose another port with USERSIGNALS_*_PORT")
            say(f"starting {c.name}")
            if c.before_start:
                c.before_start()
            self._spawn(c)
            deadline = time.monotonic() + c.ready_timeout_s
            while not c.ready():
                if c.proc.poll() is not None:
                    self.stop()
                    raise SystemExit(f"{c.name} exited with code {c.proc.returncode} before it was ready; "
                                     f"see {self.log_dir / (c.name + '.log')}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit(f"{c.name} was not ready within {c.ready_timeout_s:.0f}s; "
                                     f"see {self.log_dir / (c.name + '.log')}")
                time.sleep(0.2)
            if c.on_ready:
                c.on_ready()
            say(f"{c.name} ready (pid {c.proc.pid})")

    def watch_once(self) -> None:
        """Restart components that died (with backoff); called by the supervisor loop."""
        now = time.monotonic()
        for c in self.components:
            if self.stopping or c.proc is None or c.proc.poll() is None or not c.restart:
                continue
            if c.next_restart_at == 0.0:
                try:  # what it started may outlive it (the API's workers hold its port): not into the restart
                    os.killpg(c.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                delay = min(30.0, 2.0 ** min(c.restarts, 5))
                c.next_restart_at = now + delay
                say(f"{c.name} exited with code {c.proc.returncode}; restarting in {delay:.0f}s")
            elif now >= c.next_restart_at:
                c.restarts += 1
                c.next_restart_at = 0.0
                self._spawn(c)

    def stop(self, timeout_s: float = 20.0) -> None:
        self.stopping = True  # a supervisor thread still calling watch_once() must not restart anything
        for c in reversed(self.components):
            if c.proc is None or c.proc.poll() is not None:
                continue
            say(f"stopping {c.name}")
            try:
                os.killpg(c.proc.pid, c.stop_signal)
            except ProcessLookupError:
                continue
            grace = timeout_s if c.stop_timeout_s is None else c.stop_timeout_s
            try:
                c.proc.wait(grace)
            except subprocess.TimeoutExpired:
                say(f"{c.name} did not stop in {grace:.0f}s; killing it")
            try:  # the group may still hold children (Flink's JVM and Python workers)
                os.killpg(c.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            c.proc.wait()

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)


def pidfile(settings: Settings) -> Path:
    """The background stack's state file: ``{"state": "ready", "pid": ...}`` or ``{"state": "failed", ...}``."""
    return settings.data_dir / "stack.pid"


def supervise(stack: Supervisor, state_file: Path | None = None) -> int:
    """Start ``stack``, restart what dies until SIGTERM or SIGINT, then stop it."""
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    try:
        stack.start()
    except SystemExit as exc:
        if state_file:
            state_file.write_text(json.dumps({"state": "failed", "error": str(exc)}))
        raise
    print(stack.banner(), flush=True)
    if state_file:
        state_file.write_text(json.dumps({"state": "ready", "pid": os.getpid()}))
    try:
        while not stopping:
            stack.watch_once()
            time.sleep(0.5)
    finally:
        say("shutting down")
        stack.stop()
        if state_file:
            state_file.unlink(missing_ok=True)
        say("stopped")
    return 0
