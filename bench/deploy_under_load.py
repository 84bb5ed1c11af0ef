"""Deploys and a rollback under steady load through the edge, and the edge's overhead.

Targets (edge issue): while a separate process drives a steady load through the
edge (200 requests/s by default) and a deploy then a rollback happen, not one
answer is non-2xx and not one connection fails; the rollback of a small Python
service takes under 1 s, both until `rollback` returns and until the edge
answers from the old release. Measures, on an embedded state database, real
service processes (a stdlib `ThreadingHTTPServer` app, HTTP/1.1 keep-alive) and
an `EdgeProxy` in this process:

- the scenario: v1 deployed and serving; the load starts; after 1 s v2 is
  deployed (timed), 1 s later rolled back to v1 (timed, and until the first v1
  answer the load generator receives through the edge), 1 s later the load stops;
  every answer counted by status, error and the process that sent it;
- the overhead: p50/p99 latency of sequential keep-alive GETs (1,000 by default;
  the median of 3 rounds), and peak throughput of 16 concurrent keep-alive clients
  for 2 s (the best of 2 rounds), each direct to the service's port and through
  the edge, as ratios edge/direct, with the CPU each process spent meanwhile.

A "stale" answer is one from another process than the newly deployed one, to a
request sent after the load generator had already received an answer from the
new one (the edge reads the route table per request: expected 0). The health
check's time is shown apart: with the local defaults its retries wait 0.5 s, so
a deploy takes ~0.2 s when the service listens at the first attempt and ~0.7 s
when it does not.

Every client is a separate process speaking HTTP/1.1 over raw sockets (stdlib
only), so the edge's event loop is not shared with the load.

    .venv/bin/python bench/deploy_under_load.py [--rate 200] [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from branchline.config import load_config
from branchline.edge import EdgeProxy
from branchline.environment import Environment
from branchline.providers.compute import Deployment, DeploymentEnv, Release
from branchline.providers.compute.local import LocalComputeProvider
from branchline.store import Store, locate_state

TARGET_ROLLBACK_S = 1.0
ENVIRONMENT = Environment.production()
SERVICE = "api"
ZONE = "bench.localhost"
HOST = f"{SERVICE}.{ZONE}"  # production's host name

APP = """\
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = json.dumps({{
    "status": "ok", "version": "{version}", "pid": os.getpid(),
    "commit": os.environ["BRANCHLINE_COMMIT"], "release": os.environ["BRANCHLINE_RELEASE"],
}}).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, for the edge's pool and for direct clients
    disable_nagle_algorithm = True

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

CONFIG = """\
[project]
name = "bench"
zone = "{zone}"

[database]
migrate = "true"  # required by the schema; nothing here uses a database

[services.api]
path = "services/api"
run = ["{python}", "app.py"]
"""

# The client, run as its own process: `paced PORT HOST RATE CONNS` (until a line on
# stdin; then one JSON line per request), `latency PORT HOST N` (sequential, one
# connection), `peak PORT HOST CONNS SECONDS`. Times are time.monotonic(), the
# same clock as this process's.
CLIENT = r"""
import asyncio, json, os, re, socket, sys, threading, time

LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.I)


def request(host):
    return b"GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench\r\n\r\n" % host.encode()


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    found = LENGTH.search(head)
    body = await reader.readexactly(int(found.group(1))) if found else b""
    return int(head[9:12]), body, CLOSE.search(head) is not None


async def connect(port):
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)


async def paced(port, host, rate, conns):
    req = request(host)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    records, slot = [], [0]
    pool = [await connect(port) for _ in range(conns)]  # open before the clock starts

    def wait_for_stop():
        sys.stdin.readline()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_stop, daemon=True).start()
    t0 = time.monotonic() + 0.02

    async def worker(conn):
        while not stop.is_set():
            i = slot[0]
            slot[0] += 1
            due = t0 + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop.is_set():
                return
            sent = time.monotonic()
            try:
                if conn is None:
                    conn = await connect(port)
                conn[1].write(req)
                status, body, close = await asyncio.wait_for(read_response(conn[0]), 10)
                got = time.monotonic()
                try:
                    data = json.loads(body)
                    release, pid = data.get("release"), data.get("pid")
                except ValueError:
                    release = pid = None
                records.append([i, due, sent, got, status, release, pid, None])
                if close:
                    conn[1].close()
                    conn = None
            except Exception as exc:
                records.append([i, due, sent, time.monotonic(), None, None, None,
                                f"{type(exc).__name__}: {exc}"[:200]])
                if conn is not None:
                    conn[1].close()
                    conn = None

    print("ready", flush=True)
    await asyncio.gather(*(worker(conn) for conn in pool))
    out = sys.stdout
    out.write(json.dumps({"t0": t0, "cpu": sum(os.times()[:2])}) + "\n")
    for record in sorted(records):
        out.write(json.dumps(record) + "\n")
    out.flush()


def latency(port, host, n):
    req = request(host)
    times, errors = [], 0
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    warmup = 100
    for i in range(n + warmup):
        began = time.perf_counter()
        sock.sendall(req)
        buf = b""
        while True:
            more = sock.recv(65536)
            if not more:
                raise ConnectionError("closed")
            buf += more
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                found = LENGTH.search(buf[: end + 4])
                if len(buf) >= end + 4 + int(found.group(1)):
                    break
        if buf[9:12] != b"200":
            errors += 1
        if i >= warmup:
            times.append(time.perf_counter() - began)
    sock.close()
    times.sort()
    print(json.dumps({"p50": times[len(times) // 2], "p99": times[int(len(times) * 0.99)],
                      "errors": errors}))


async def peak(port, host, conns, seconds):
    req = request(host)
    counts, errors = [0], [0]
    pool = [await connect(port) for _ in range(conns)]
    cpu0 = sum(os.times()[:2])
    began = time.monotonic()
    end = began + seconds
    print("go", flush=True)

    async def worker(reader, writer):
        while time.monotonic() < end:
            writer.write(req)
            status, _, _ = await read_response(reader)
            if status == 200:
                counts[0] += 1
            else:
                errors[0] += 1
        writer.close()

    await asyncio.gather(*(worker(*conn) for conn in pool))
    elapsed = time.monotonic() - began
    print(json.dumps({"rps": counts[0] / elapsed, "errors": errors[0],
                      "cpu": (sum(os.times()[:2]) - cpu0) / elapsed,
                      "began": began, "elapsed": elapsed}))


mode, port, host = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == "paced":
    asyncio.run(paced(port, host, float(sys.argv[4]), int(sys.argv[5])))
elif mode == "latency":
    latency(port, host, int(sys.argv[4]))
else:
    asyncio.run(peak(port, host, int(sys.argv[4]), float(sys.argv[5])))
"""


@dataclass
class Answer:
    slot: int
    due: float
    sent: float
    got: float
    status: int | None
    release: str | None
    pid: int | None
    error: str | None


@dataclass
class Results:
    rate: float = 0.0
    answers: list[Answer] = field(default_factory=list)
    load_cpu: float = 0.0
    deploy_v1: float = 0.0
    deploy_v2: float = 0.0
    deploy_v2_started: float = 0.0
    rollback: float = 0.0
    rollback_started: float = 0.0
    health: dict[str, tuple[float, int]] = field(default_factory=dict)  # what -> (s, attempts)
    processes: dict[int, str] = field(default_factory=dict)  # pid -> which deployment
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # direct / edge
    peak: dict[str, dict[str, float]] = field(default_factory=dict)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@bench", *args],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def make_repo(repo: Path) -> tuple[str, str]:
    """A project with one service, committed twice: (v1, v2)."""
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "branchline.toml").write_text(CONFIG.format(zone=ZONE, python=sys.executable))
    app = repo / "services" / "api" / "app.py"
    app.parent.mkdir(parents=True)
    commits = []
    for version in ("v1", "v2"):
        app.write_text(APP.format(version=version))
        git(repo, "add", ".")
        git(repo, "commit", "-qm", version)
        commits.append(git(repo, "rev-parse", "HEAD"))
    return commits[0], commits[1]


def health_of(deployment: Deployment) -> tuple[float, int]:
    health = deployment.detail.get("health", {})
    return float(health.get("elapsed", 0.0)), len(health.get("attempts", []))


async def answers_from(port: int, release: Release, timeout: float = 10.0) -> None:
    """Wait until the edge answers `HOST` from `release`."""
    request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    deadline = time.monotonic() + timeout
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            raw = await reader.read()
            writer.close()
            if raw.startswith(b"HTTP/1.1 200"):
                body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
                if body.get("release") == release.name:
                    return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the edge never answered from {release.name}")
        await asyncio.sleep(0.02)


async def client(*args: object) -> dict[str, Any]:
    """Run the client once in latency mode and return its JSON."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, *map(str, args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"client {args[0]} failed: {err.decode()[-2000:]}")
    data: dict[str, Any] = json.loads(out)
    return data


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def scenario(
    provider: LocalComputeProvider,
    edge: EdgeProxy,
    v1: Release,
    v2: Release,
    args: argparse.Namespace,
    results: Results,
    loads: list[asyncio.subprocess.Process],
) -> Deployment:
    """Deploy v1; under load deploy v2, then roll back. The rollback's deployment."""
    began = time.monotonic()
    first = await provider.deploy(SERVICE, ENVIRONMENT, v1, DeploymentEnv())
    results.deploy_v1 = time.monotonic() - began
    results.health["deploy v1"] = health_of(first)
    results.processes[int(first.detail["pid"])] = "v1"
    await answers_from(edge.port, v1)

    load = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, "paced", str(edge.port), HOST, str(args.rate),
        str(args.conns),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    loads.append(load)
    assert load.stdout is not None
    ready = await asyncio.wait_for(load.stdout.readline(), 30)
    if ready.strip() != b"ready":
        raise RuntimeError("the load generator did not start")
    results.rate = args.rate
    cpu0 = cpu_seconds(load.pid)

    await asyncio.sleep(1.0)
    results.deploy_v2_started = time.monotonic()
    second = await provider.deploy(SERVICE, ENVIRONMENT, v2, DeploymentEnv())
    results.deploy_v2 = time.monotonic() - results.deploy_v2_started
    results.health["deploy v2"] = health_of(second)
    results.processes[int(second.detail["pid"])] = "v2"

    await asyncio.sleep(1.0)
    results.rollback_started = time.monotonic()
    back = await provider.rollback(SERVICE, ENVIRONMENT)
    results.rollback = time.monotonic() - results.rollback_started
    results.health["rollback"] = health_of(back)
    results.processes[int(back.detail["pid"])] = "v1 again"

    await asyncio.sleep(1.0)
    results.load_cpu = cpu_seconds(load.pid) - cpu0
    out, err = await asyncio.wait_for(load.communicate(b"stop\n"), 30)
    if load.returncode != 0:
        raise RuntimeError(f"the load generator failed: {err.decode()[-2000:]}")
    lines = out.decode().splitlines()
    results.answers = [Answer(*json.loads(line)) for line in lines[1:]]
    await provider.aclose()  # v2 drained and stopped before the overhead runs
    return back


async def peak_run(
    port: int, host: str, service_pid: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One peak run, with the CPU the service and this process (the edge) spent in
    the client's timed window (it prints `go` as the window opens)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, "peak", str(port), host, str(args.clients),
        str(args.seconds), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        go = await asyncio.wait_for(proc.stdout.readline(), 30)
        edge0, service0, t0 = sum(os.times()[:2]), cpu_seconds(service_pid), time.monotonic()
        line = await asyncio.wait_for(proc.stdout.readline(), args.seconds + 30)
        elapsed = time.monotonic() - t0
        edge1, service1 = sum(os.times()[:2]), cpu_seconds(service_pid)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if go.strip() != b"go" or proc.returncode != 0:
        raise RuntimeError(f"the peak client failed: {err.decode()[-2000:]}")
    found: dict[str, Any] = json.loads(line)
    found["service_cpu"] = (service1 - service0) / elapsed
    found["edge_cpu"] = (edge1 - edge0) / elapsed
    return found


async def overhead(
    service_port: int, service_pid: int, edge_port: int, args: argparse.Namespace, results: Results
) -> None:
    """Direct and edge runs alternate, so that a disturbance of the machine hits both:
    latency as the median over rounds, peak as the best round."""
    targets = {"direct": (service_port, "127.0.0.1"), "edge": (edge_port, HOST)}
    latency: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    peak: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for _ in range(args.rounds):
        for name, (port, host) in targets.items():
            latency[name].append(await client("latency", port, host, args.requests))
    for _ in range(args.peak_rounds):
        for name, (port, host) in targets.items():
            peak[name].append(await peak_run(port, host, service_pid, args))
    for name in targets:
        results.latency[name] = {
            key: statistics.median(run[key] for run in latency[name]) for key in ("p50", "p99")
        }
        results.peak[name] = max(peak[name], key=lambda run: float(run["rps"]))


async def measure(root: Path, store: Store, args: argparse.Namespace, results: Results) -> None:
    repo = root / "repo"
    sha1, sha2 = make_repo(repo)
    config = load_config(repo / "branchline.toml", env={})
    await store.start()
    edge = EdgeProxy(store)
    provider: LocalComputeProvider | None = None
    loads: list[asyncio.subprocess.Process] = []
    try:
        await edge.start()
        provider = LocalComputeProvider(
            config=config, store=store, state_dir=root / "state", repo=repo,
            edge_port=edge.port, drain=1.0,
        )  # fmt: skip
        v1 = await provider.build(SERVICE, sha1)
        v2 = await provider.build(SERVICE, sha2)
        back = await scenario(provider, edge, v1, v2, args, results, loads)
        await overhead(int(back.detail["port"]), int(back.detail["pid"]), edge.port, args, results)
    finally:
        for load in loads:
            if load.returncode is None:
                load.kill()
                await load.wait()
        if provider is not None:
            try:
                await provider.delete(SERVICE, ENVIRONMENT)
            finally:
                await provider.aclose()
        # `processes.stop` returns once a service is a zombie, not always reaped:
        # collect them here rather than leave them to whoever adopts them.
        for pid in results.processes:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        await edge.stop()


# -- the report ---------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


def report(
    results: Results, args: argparse.Namespace
) -> tuple[list[tuple[str, str]], dict[str, Any], bool]:
    requests, clients = args.requests, args.clients
    answers = results.answers
    ok_answers = [a for a in answers if a.status is not None and 200 <= a.status < 300]
    non_2xx = [a for a in answers if a.status is not None and not 200 <= a.status < 300]
    errors = [a for a in answers if a.error is not None]
    latencies = [a.got - a.sent for a in ok_answers]
    lateness = [a.sent - a.due for a in answers]
    span = (max(a.got for a in answers) - min(a.sent for a in answers)) if answers else 0.0

    def first_from(label: str, after: float) -> float | None:
        times = [
            a.got
            for a in ok_answers
            if a.pid is not None and results.processes.get(a.pid) == label and a.sent >= after
        ]
        return min(times) - after if times else None

    to_v2 = first_from("v2", results.deploy_v2_started)
    to_v1 = first_from("v1 again", results.rollback_started)
    # After the client has seen the new process answer, every request it sends later
    # must go to it: an answer from another process then is a stale route.
    stale = 0
    for label, started in (
        ("v2", results.deploy_v2_started),
        ("v1 again", results.rollback_started),
    ):
        seen = first_from(label, started)
        if seen is None:
            continue
        switch = started + seen
        nxt = {"v2": results.rollback_started, "v1 again": float("inf")}[label]
        stale += sum(
            1
            for a in ok_answers
            if switch < a.sent < nxt and results.processes.get(a.pid or 0) != label
        )
    by_process = Counter(results.processes.get(a.pid or 0, f"pid {a.pid}") for a in ok_answers)
    kinds = Counter((a.error or "").split(":")[0] for a in errors)

    h1, h2, hr = (results.health[k] for k in ("deploy v1", "deploy v2", "rollback"))
    lat, peak = results.latency, results.peak
    lat_ratio = lat["edge"]["p50"] / lat["direct"]["p50"]
    p99_ratio = lat["edge"]["p99"] / lat["direct"]["p99"]
    rps_ratio = peak["edge"]["rps"] / peak["direct"]["rps"]
    rollback_seen = to_v1 if to_v1 is not None else float("inf")
    under_load = " / ".join(
        _ms(v) for v in (_pct(latencies, 0.5), _pct(latencies, 0.99), max(latencies, default=0))
    )

    rows = [
        (f"load: requests sent ({results.rate:.0f}/s target)", str(len(answers))),
        ("load: achieved rate", f"{len(answers) / span:.1f} /s" if span else "-"),
        ("load: answered 2xx", str(len(ok_answers))),
        ("load: non-2xx answers", str(len(non_2xx))),
        ("load: connection errors", str(len(errors))),
        *(
            (f"load: answers from {label}", str(count))
            for label, count in sorted(by_process.items())
        ),
        ("load: stale answers after a switch was seen", str(stale)),
        ("load: latency p50 / p99 / max", under_load),
        ("load: sent late vs schedule, max", _ms(max(lateness, default=0.0))),
        ("deploy v1, no load (call)", f"{results.deploy_v1:.3f} s"),
        ("  health check in it (attempts)", f"{h1[0]:.3f} s ({h1[1]})"),
        ("deploy v2 under load (call)", f"{results.deploy_v2:.3f} s"),
        ("  health check in it (attempts)", f"{h2[0]:.3f} s ({h2[1]})"),
        ("  call start -> first v2 answer via edge", f"{to_v2:.3f} s" if to_v2 else "never"),
        ("rollback under load (call)", f"{results.rollback:.3f} s"),
        ("  health check in it (attempts)", f"{hr[0]:.3f} s ({hr[1]})"),
        ("  call start -> first v1 answer via edge", f"{to_v1:.3f} s" if to_v1 else "never"),
        ("load generator CPU (s per s of load)", f"{results.load_cpu / span:.2f}" if span else "-"),
    ]
    failed = sorted(kinds.items()) + [(f"HTTP {a.status}", 1) for a in non_2xx[:5]]
    rows += [(f"  failure: {kind}", str(n)) for kind, n in failed]

    summary = {
        "requests": len(answers),
        "non_2xx": len(non_2xx),
        "conn_errors": len(errors),
        "stale": stale,
        "answers_v1": by_process.get("v1", 0),
        "answers_v2": by_process.get("v2", 0),
        "answers_v1_again": by_process.get("v1 again", 0),
        "load_p99_ms": round(_pct(latencies, 0.99) * 1000, 1),
        "deploy_v1_s": round(results.deploy_v1, 3),
        "deploy_s": round(results.deploy_v2, 3),
        "deploy_first_new_s": round(to_v2, 3) if to_v2 is not None else "none",
        "rollback_s": round(results.rollback, 3),
        "rollback_first_old_s": round(to_v1, 3) if to_v1 is not None else "none",
        "p50_direct_us": round(lat["direct"]["p50"] * 1e6),
        "p50_edge_us": round(lat["edge"]["p50"] * 1e6),
        "p50_ratio": round(lat_ratio, 2),
        "p99_direct_us": round(lat["direct"]["p99"] * 1e6),
        "p99_edge_us": round(lat["edge"]["p99"] * 1e6),
        "p99_ratio": round(p99_ratio, 2),
        "peak_direct_rps": round(peak["direct"]["rps"]),
        "peak_edge_rps": round(peak["edge"]["rps"]),
        "peak_ratio": round(rps_ratio, 2),
    }
    ok = (
        not errors
        and not non_2xx
        and results.rollback < TARGET_ROLLBACK_S
        and rollback_seen < TARGET_ROLLBACK_S
    )
    rows.append(("", ""))
    rows.append(("overhead", f"{'direct':>12}{'edge':>12}{'edge/direct':>13}"))
    for key in ("p50", "p99"):
        d, e = lat["direct"][key] * 1e6, lat["edge"][key] * 1e6
        rows.append(
            (
                f"  {key} latency, {requests} sequential GETs",
                f"{d:>9.0f} us{e:>9.0f} us{e / d:>13.2f}",
            )
        )
    d, e = peak["direct"]["rps"], peak["edge"]["rps"]
    rows.append(
        (f"  peak, {clients} keep-alive clients", f"{d:>10.0f}/s{e:>10.0f}/s{e / d:>13.2f}")
    )
    for who in ("service", "edge"):
        d, e = peak["direct"][f"{who}_cpu"], peak["edge"][f"{who}_cpu"]
        rows.append((f"  {who} process CPU during peak (s/s)", f"{d:>12.2f}{e:>12.2f}"))
    d, e = peak["direct"]["cpu"], peak["edge"]["cpu"]
    rows.append(("  client process CPU during peak (s/s)", f"{d:>12.2f}{e:>12.2f}"))
    return rows, summary, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s during deploys")
    parser.add_argument("--conns", type=int, default=32, help="keep-alive connections of the load")
    parser.add_argument("--requests", type=int, default=1000, help="sequential GETs for latency")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients for peak")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each peak run")
    parser.add_argument("--rounds", type=int, default=3, help="latency runs of each kind")
    parser.add_argument("--peak-rounds", type=int, default=2, help="peak runs of each kind")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="branchline-bench-"))
    root.chmod(0o755)
    store = Store(locate_state(root, {"BRANCHLINE_STATE_DIR": str(root / "state")}))
    results = Results()
    try:
        asyncio.run(measure(root, store, args, results))
    finally:
        store.location.cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)

    rows, summary, ok = report(results, args)
    width = max(len(label) for label, _ in rows) + 2
    print(f"{'measure':<{width}}value")
    for label, value in rows:
        print(f"{label:<{width}}{value}")
    print(
        "summary: "
        + " ".join(f"{k}={v}" for k, v in summary.items())
        + f" rate={args.rate:.0f} cpu_count={os.cpu_count()}"
        + f" target_rollback_s={TARGET_ROLLBACK_S} ok={str(ok).lower()}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
