import json
import os

from bench.common import emit


def test_the_last_line_is_strict_json_with_unmeasured_figures_as_null(capsys):
    emit({"bench": "soak", "p99_ms_last_min": float("nan"), "by_min": [1.5, float("inf")], "rss": {"api": float("nan")}},
         record=False)
    line = capsys.readouterr().out.strip()
    assert json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c))) == {
        "bench": "soak", "p99_ms_last_min": None, "by_min": [1.5, None], "rss": {"api": None}}


def test_a_run_is_recorded_with_its_date_commit_and_machine(tmp_path, monkeypatch, capsys):
    import bench.common

    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)
    emit({"bench": "freshness", "p50_ms": 12.5})
    emit({"bench": "freshness", "p50_ms": 13.0})
    runs = [json.loads(line) for line in (tmp_path / "freshness.jsonl").read_text().splitlines()]
    assert [r["result"]["p50_ms"] for r in runs] == [12.5, 13.0]
    run = runs[0]["run"]
    assert run["date"].startswith("20") and len(run["commit"]) == 12
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    assert run["machine"]["cpus"] == os.cpu_count()
    assert abs(run["machine"]["mem_gb"] - memory_gb) <= 0.05, (run["machine"], memory_gb)
    assert capsys.readouterr().out.strip().splitlines()[-1] == '{"bench": "freshness", "p50_ms": 13.0}'


def _serve(delay_s: float):
    """A local HTTP/1.1 server answering every request with 200 after ``delay_s``."""
    import asyncio

    async def handle(reader, writer):
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await asyncio.sleep(delay_s)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return asyncio.start_server(handle, "127.0.0.1", 0)


def _load(delay_s: float, rate: float, seconds: float, conns: int):
    import asyncio

    from bench.common import open_loop

    async def go():
        server = await _serve(delay_s)
        port = server.sockets[0].getsockname()[1]
        results: list = []
        unsent = await open_loop("127.0.0.1", port, [b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"], rate, seconds, results,
                                 conns)
        server.close()
        return results, unsent

    return asyncio.run(go())


def test_open_loop_sends_every_request_a_fast_server_can_take():
    results, unsent = _load(0.0, rate=200, seconds=0.5, conns=4)
    assert len(results) == 100 and unsent == [] and all(ok for *_, ok in results)


def test_open_loop_reports_when_the_requests_it_never_sent_were_due():
    # 2 connections, 50 ms per answer: at most ~40 answers/s against 200 due per second.
    results, unsent = _load(0.05, rate=200, seconds=0.5, conns=2)
    assert len(results) + len(unsent) == 100 and len(results) <= 30
    assert all(0 <= t < 0.5 for t in unsent)
    # latency counts from when a request was due, so the queue shows
    assert max(lat for _, lat, _ in results) > 0.2


def test_group_cpu_counts_the_cpu_time_of_every_live_process_of_a_group():
    import subprocess
    import sys
    import time

    from bench.common import group_cpu_s

    # A parent and its child in one new process group, each burning 0.4 s of CPU, then idle.
    spin = "import time\nwhile time.process_time() < 0.4: pass\ntime.sleep(10)"
    code = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {spin!r}])\n{spin}"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 8
        while group_cpu_s(proc.pid) < 0.7 and time.monotonic() < deadline:  # the parent alone: ~0.4
            time.sleep(0.1)
        assert 0.7 <= group_cpu_s(proc.pid) < 2.0  # (/proc counts whole 10 ms ticks)
    finally:
        subprocess.run(["pkill", "-KILL", "-g", str(proc.pid)])
        proc.wait()


def _closed(status: bytes, delay_s: float, seconds: float, conns: int):
    """closed_loop against a server answering ``status`` after ``delay_s``; also the most
    requests the server ever had in hand at once."""
    import asyncio

    from bench.common import closed_loop

    busy = [0, 0]  # now, most

    async def handle(reader, writer):
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                busy[0] += 1
                busy[1] = max(busy)
                await asyncio.sleep(delay_s)
                busy[0] -= 1
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def go():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        counts = await closed_loop("127.0.0.1", server.sockets[0].getsockname()[1],
                                   b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", seconds, conns)
        server.close()
        return counts, busy[1]

    return asyncio.run(go())


def test_closed_loop_keeps_one_request_in_flight_on_each_connection():
    (ok, failed), most = _closed(b"200 OK", 0.02, seconds=0.3, conns=3)
    assert most == 3 and failed == 0
    # each connection waits for its answer (20 ms) before the next: at most 0.3 / 0.02 + 1 each
    assert 3 <= ok <= 3 * 16


def test_closed_loop_counts_answers_other_than_200_as_failed():
    (ok, failed), _ = _closed(b"503 Service Unavailable", 0.0, seconds=0.1, conns=2)
    assert ok == 0 and failed >= 2


def test_cpu_reference_reports_both_figures_and_their_ratio():
    from bench.common import cpu_reference

    ref = cpu_reference(gap_s=0.001, n=5)
    assert ref["unit_us"] > 0 and ref["after_idle_us"] > 0
    assert ref["idle_penalty"] == round(ref["after_idle_us"] / ref["unit_us"], 2)
