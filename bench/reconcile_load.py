"""The edge's latency while reconcile runs over many multi-worker services.

Target (real apps issue): with 10 services of gunicorn `--workers 2` deployed (a
keeper, a master and two workers each, boxed) and `serve` reconciling every
second, a client asking the edge every 50 ms sees a p99 under 50 ms, and the
event loop is never held more than 100 ms. Measured with the real CLI, a real
`serve --detach` and real processes, in rounds that interleave:

- direct: the same client asking the services' own ports (the raw work);
- edge: the client through the edge while reconcile passes run (counted from
  serve's log, with how long each pass took).

Reported: medians over rounds of p50/p99/max per mode, the edge/direct p99 ratio,
reconcile passes seen and their median duration, stalls logged, and the load.

    .venv/bin/python bench/reconcile_load.py [--services 10] [--rounds 3] [--seconds 6]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TARGET_P99_MS = 50.0
TARGET_STALL_MS = 100.0
EVERY = 0.05
ZONE = "load.localhost"
APP = """\
import json, os

def application(environ, start_response):
    body = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""


def branchline(root: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "branchline", *args], cwd=root, env=env,
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"branchline {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def make_project(root: Path, services: int) -> None:
    venv_bin = json.dumps(str(Path(sys.executable).parent))
    lines = [
        '[project]\nname = "load"\nzone = "load.localhost"\n',
        '[database]\nmigrate = "true"\n',
        f'[security]\npath = [{venv_bin}, "/usr/bin", "/bin"]\n',
    ]
    for n in range(services):
        (root / "services" / f"s{n}").mkdir(parents=True)
        (root / "services" / f"s{n}" / "wsgi_app.py").write_text(APP)
        lines.append(
            f'[services.s{n}]\npath = "services/s{n}"\nhealth_path = "/"\n'
            'run = ["gunicorn", "--workers", "2", "wsgi_app:application"]\n'
        )
    (root / "branchline.toml").write_text("\n".join(lines))
    for args in (("init", "-q", "-b", "main"), ("add", "."), ("commit", "-qm", "load")):
        subprocess.run(["git", "-C", str(root), "-c", "user.name=b", "-c", "user.email=b@b",
                        *args], check=True)  # fmt: skip


def poll(targets: list[tuple[str, dict[str, str]]], seconds: float) -> tuple[list[float], int]:
    """Ask each target in turn every 50 ms for `seconds`: the answer times, failures."""
    timings: list[float] = []
    failures = 0
    end = time.monotonic() + seconds
    turn = 0
    while time.monotonic() < end:
        url, headers = targets[turn % len(targets)]
        turn += 1
        began = time.monotonic()
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 (http, ours)
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
                answer.read()
            timings.append(time.monotonic() - began)
        except OSError:
            failures += 1
        time.sleep(EVERY)
    return timings, failures


def quantiles(timings: list[float]) -> dict[str, float]:
    ordered = sorted(timings)
    return {
        "p50": statistics.median(ordered) * 1e3,
        "p99": ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1e3,
        "max": ordered[-1] * 1e3,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    work.chmod(0o755)
    root, state = work / "project", work / "state"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRANCHLINE_")}
    env.update(BRANCHLINE_STATE_DIR=str(state), BRANCHLINE_RECONCILE_EVERY="1")
    try:
        make_project(root, args.services)
        branchline(root, env, "serve", "--detach", "--api-port", "0")
        began = time.monotonic()
        for n in range(args.services):
            branchline(root, env, "deploy", f"s{n}", "--env", "production")
        print(f"deployed {args.services} services in {time.monotonic() - began:.1f} s",
              flush=True)  # fmt: skip
        info = json.loads((state / "edge.json").read_text())
        listed = json.loads(branchline(root, env, "--json", "deployments", "list"))
        ports = [d["detail"]["port"] for d in listed if d["status"] == "live"]
        edge = [(f"http://127.0.0.1:{info['edge_port']}/", {"Host": f"s{n}.{ZONE}"})
                for n in range(args.services)]  # fmt: skip
        direct = [(f"http://127.0.0.1:{port}/", {"Host": f"s0.{ZONE}"}) for port in ports]
        log = state / "edge.log"
        results: dict[str, list[dict[str, float]]] = {"direct": [], "edge": []}
        passes_before = log.read_text().count("reconcile pass:")
        failures = 0
        for _ in range(args.rounds):
            for mode, targets in (("direct", direct), ("edge", edge)):
                timings, failed = poll(targets, args.seconds)
                failures += failed
                results[mode].append(quantiles(timings))
        text = log.read_text()
        passes = re.findall(r"reconcile pass: \d+ finding\(s\) in (\d+) ms", text)
        seen = text.count("reconcile pass:") - passes_before
        stalls = [int(ms) for ms in re.findall(r"event loop stalled for (\d+) ms", text)]
    finally:
        subprocess.run([sys.executable, "-m", "branchline", "down"], cwd=root, env=env,
                       capture_output=True, check=False)  # fmt: skip
        subprocess.run([sys.executable, "-m", "branchline", "stop", "--all"], cwd=root, env=env,
                       capture_output=True, check=False)  # fmt: skip
        _stop_services(state)
        shutil.rmtree(work, ignore_errors=True)
    med = {mode: {k: statistics.median(r[k] for r in rounds) for k in ("p50", "p99", "max")}
           for mode, rounds in results.items()}  # fmt: skip
    for mode, q in med.items():
        print(f"{mode:>6}: p50 {q['p50']:.1f} ms, p99 {q['p99']:.1f} ms, max {q['max']:.1f} ms "
              f"(median of {args.rounds} rounds)")  # fmt: skip
    reconcile_ms = statistics.median(int(p) for p in passes[-seen:]) if seen and passes else 0
    print(
        f"reconcile: {seen} passes meanwhile, median {reconcile_ms} ms each; "
        f"stalls logged: {stalls or 'none'}; failed requests: {failures}"
    )
    load = os.getloadavg()[0]
    ok = (med["edge"]["p99"] < TARGET_P99_MS and not [s for s in stalls if s > TARGET_STALL_MS]
          and failures == 0 and seen >= args.rounds)  # fmt: skip
    ratio = med["edge"]["p99"] / med["direct"]["p99"] if med["direct"]["p99"] else 0.0
    print(
        "summary: "
        f"services={args.services} edge_p99_ms={med['edge']['p99']:.1f} "
        f"edge_p50_ms={med['edge']['p50']:.1f} edge_max_ms={med['edge']['max']:.1f} "
        f"direct_p99_ms={med['direct']['p99']:.1f} p99_ratio={ratio:.2f} "
        f"reconcile_passes={seen} reconcile_ms={reconcile_ms} stalls={len(stalls)} "
        f"failures={failures} load1={load:.2f} target_p99_ms={TARGET_P99_MS:.0f} "
        f"ok={'yes' if ok else 'no'}"
    )
    return 0 if ok else 1


def _stop_services(state: Path) -> None:
    """Whatever `down` left: every process whose environment names this state."""
    marker = f"BRANCHLINE_STATE={state}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") or any(
            item.startswith(marker) for item in environ.split(b"\0")
        ):
            with contextlib.suppress(OSError):
                os.kill(int(proc.name), 9)


if __name__ == "__main__":
    sys.exit(main())
