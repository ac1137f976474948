"""infra.stack.supervisor on plain child processes (no servers): components start in order, each
waited for; one that dies before it is ready, or is never ready, stops the rest with an error naming
it and its log; a dead one is restarted after its backoff; stop ends them all, last started first."""
import socket
import sys
import time

import pytest

from infra.stack.supervisor import Component, Supervisor
from usersignals.settings import load_settings

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


class Processes(Supervisor):
    def __init__(self, tmp_path, components):
        super().__init__(load_settings().with_overrides(data_dir=tmp_path))
        self.defined = components

    def define(self):
        return self.defined

    def banner(self):
        return ", ".join(c.name for c in self.components)


def running(c: Component) -> bool:
    return c.proc is not None and c.proc.poll() is None


def test_components_start_in_order_with_their_hooks_and_stop_last_first(tmp_path, capsys):
    events = []

    def component(name):
        return Component(name, SLEEP, ready=lambda: events.append(f"ready? {name}") or True,
                         before_start=lambda: events.append(f"before {name}"),
                         on_ready=lambda: events.append(f"on_ready {name}"))

    procs = Processes(tmp_path, [component("first"), component("second")])
    procs.start()
    try:
        assert events == ["before first", "ready? first", "on_ready first",
                          "before second", "ready? second", "on_ready second"]
        assert all(map(running, procs.components)) and procs.component("second").name == "second"
        assert (tmp_path / "logs" / "first.log").read_text().splitlines()[1].startswith("=== ")
    finally:
        procs.stop(timeout_s=5)
    assert not any(map(running, procs.components))
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[stack] stopping")]
    assert said == ["[stack] stopping second", "[stack] stopping first"]


def test_a_component_that_dies_before_it_is_ready_stops_the_others_and_names_its_log(tmp_path):
    procs = Processes(tmp_path, [Component("kept", SLEEP, ready=lambda: True),
                                 Component("broken", [sys.executable, "-c", "import sys; sys.exit(3)"],
                                           ready=lambda: False)])
    with pytest.raises(SystemExit, match=r"broken exited with code 3 before it was ready; see .*broken\.log"):
        procs.start()
    assert not running(procs.component("kept"))


def test_a_component_never_ready_is_given_up_after_its_timeout(tmp_path):
    procs = Processes(tmp_path, [Component("slow", SLEEP, ready=lambda: False, ready_timeout_s=0.5)])
    started = time.monotonic()
    with pytest.raises(SystemExit, match=r"slow was not ready within 0s; see .*slow\.log"):
        procs.start()
    assert 0.5 <= time.monotonic() - started < 5
    assert not running(procs.component("slow"))


def test_a_port_already_taken_is_named_before_anything_starts(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        procs = Processes(tmp_path, [Component("api", SLEEP, ready=lambda: True, ports=(port,))])
        with pytest.raises(SystemExit, match=f"port {port} \\(api\\) is already in use"):
            procs.start()
    assert procs.component("api").proc is None


def test_a_dead_component_is_restarted_after_its_backoff_and_one_not_to_restart_is_left(tmp_path):
    procs = Processes(tmp_path, [Component("worker", SLEEP, ready=lambda: True),
                                 Component("once", [sys.executable, "-c", "pass"], ready=lambda: True,
                                           restart=False)])
    procs.start()
    try:
        worker, once = procs.components
        old = worker.proc
        old.kill()
        old.wait()
        procs.watch_once()                        # seen dead: restart in 2**0 = 1 s
        assert worker.proc is old and 0.9 < worker.next_restart_at - time.monotonic() <= 1.0
        procs.watch_once()
        assert worker.proc is old                 # not before the backoff
        time.sleep(1.05)
        procs.watch_once()
        assert worker.proc is not old and running(worker) and worker.restarts == 1
        once.proc.wait(5)
        procs.watch_once()
        assert once.restarts == 0 and not running(once)
    finally:
        procs.stop(timeout_s=5)
    assert not running(worker)


def test_nothing_is_restarted_once_stopping(tmp_path):
    procs = Processes(tmp_path, [Component("worker", SLEEP, ready=lambda: True)])
    procs.start()
    procs.stop(timeout_s=5)
    old = procs.component("worker").proc
    procs.watch_once()
    time.sleep(0.05)
    procs.watch_once()
    assert procs.component("worker").proc is old and procs.component("worker").next_restart_at == 0.0
