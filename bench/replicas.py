#!/usr/bin/env python3
"""Scale-out benchmark: unique signed events acknowledged by 1, 2 and 3 hookgate replicas on one
PostgreSQL database, next to one hookgate on the embedded store and the bare actix + HMAC handler
(examples/bare.rs), all driven by wrk with pre-signed requests (bench/wrkbench.py, bench/signed.lua).

    scripts/with-postgres.sh bench/replicas.py            # REPS=3 DURATION=10s CONNS=64
    REPS=1 DURATION=3s scripts/with-postgres.sh bench/replicas.py   # smoke run
    SETUPS="bare pg1" SKIP_BUILD=1 ...                             # some setups, no build

The database is the throw-away cluster of scripts/with-postgres.sh (HOOKGATE_TEST_PG; fsync and
synchronous_commit on, stock settings otherwise); each run gets a fresh database. With N
replicas, N wrk processes (CONNS/N connections each) send disjoint ids, one per
replica, as a load balancer would spread them (two wrk threads in all when they fit, as
bench/run.sh uses, else one per replica). Setups alternate within each repetition; the
report gives medians and every repetition: acknowledged events/s (sum over the wrk processes),
p99 (the worst of them), the ratio to bare, and the CPU the replicas and PostgreSQL used per
event. Loopback only. Everything runs on this machine's cores: replicas, PostgreSQL and wrk
share them, so more replicas measure contention, not added capacity.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPS = int(os.environ.get("REPS", "3"))
DURATION = os.environ.get("DURATION", "10s")
CONNS = int(os.environ.get("CONNS", "64"))
LINES = int(os.environ.get("LINES", "120000"))
BIN_DIR = os.environ.get("BIN_DIR", os.path.join(ROOT, "target", "release"))
PG = os.environ.get("HOOKGATE_TEST_PG")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SETUPS = os.environ.get("SETUPS", "bare embedded pg1 pg2 pg3").split()

CONFIG = """
providers_dir = "{root}/providers"
[server]
bind = "127.0.0.1:{port}"
[storage]
{storage}
[log]
level = "warn"
[providers.demo]
kind = "generic"
secrets = ["hookgate-demo-secret-do-not-use-in-production"]
[[sinks]]
name = "audit"
kind = "file"
path = "{sink}"
"""


def replicas(setup):
    return 1 if setup in ("bare", "embedded") else int(setup[2:])


def wrk_threads(n):
    """wrk threads per server: two in all when they fit (as bench/run.sh), at least one each."""
    return max(1, 2 // n)


def log(*a):
    print(f"[{time.strftime('%T')}]", *a, file=sys.stderr, flush=True)


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def postgres_pids():
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if open(f"/proc/{pid}/comm").read().strip() == "postgres":
                    out.append(int(pid))
            except OSError:
                pass
    return out


def pg_cpu():
    # Backends come and go; count every postgres process alive at each reading (a backend that
    # exits between the readings is lost, so this is a lower bound).
    return cpu_ticks(postgres_pids())


def psql(sql):
    subprocess.run(["psql", PG, "-qAtc", sql], check=True, stdout=subprocess.DEVNULL)


def wait_port(port, proc, timeout=30):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server on {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def start(setup, work, rep):
    """Starts the servers of a setup; returns (processes, ports)."""
    if setup == "bare":
        proc = subprocess.Popen([os.path.join(BIN_DIR, "examples", "bare"), "127.0.0.1:18090"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(18090, proc)
        return [proc], [18090]
    n = 1 if setup == "embedded" else int(setup[2:])
    if setup == "embedded":
        storage = f'path = "{work}/embedded-{rep}"'
    else:
        db = f"bench_{setup}_{rep}_{int(time.time())}"
        psql(f"CREATE DATABASE {db}")
        url = PG.rsplit("/", 1)[0] + "/" + db
        storage = f'backend = "postgres"\nurl = "{url}"\npool_size = 16'
    procs, ports = [], []
    for i in range(n):
        port = 8080 + i
        cfg = os.path.join(work, f"{setup}-{rep}-{i}.toml")
        with open(cfg, "w") as f:
            f.write(CONFIG.format(root=ROOT, port=port, storage=storage,
                                  sink=f"{work}/{setup}-{rep}-{i}.jsonl"))
        proc = subprocess.Popen([os.path.join(BIN_DIR, "hookgate"), "serve", "--config", cfg],
                                stdout=subprocess.DEVNULL, stderr=open(cfg + ".log", "w"))
        # Replicas start one after the other (each migrates or finds the schema migrated).
        wait_port(port, proc)
        procs.append(proc)
        ports.append(port)
    return procs, ports


def run(setup, rep, work, files):
    procs, ports = start(setup, work, rep)
    n = len(ports)
    conns = max(1, CONNS // n)
    pg0 = pg_cpu() if setup.startswith("pg") else 0
    cpu0 = cpu_ticks(p.pid for p in procs)
    wrks = []
    for i, port in enumerate(ports):
        out = os.path.join(work, f"{setup}-{rep}-{i}.wrk")
        req = files[(rep, setup)][i]
        wrks.append((out, subprocess.Popen(
            ["wrk", f"-t{wrk_threads(n)}", f"-c{conns}", f"-d{DURATION}", "--latency", "--timeout", "30s",
             "-s", os.path.join(ROOT, "bench", "signed.lua"), f"http://127.0.0.1:{port}/",
             "--", req, f"threads={wrk_threads(n)}"],
            stdout=open(out, "w"), stderr=subprocess.STDOUT)))
    for _, w in wrks:
        w.wait()
    cpu1 = cpu_ticks(p.pid for p in procs)
    pg1 = pg_cpu() if setup.startswith("pg") else 0
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    rps, p99, errors, wraps = 0.0, 0.0, 0, 0
    for out, _ in wrks:
        text = open(out, errors="replace").read()
        m = re.search(r"^WRKJSON (\{.*\})$", text, re.M)
        if not m:
            sys.exit(f"{out}: no WRKJSON line:\n{text}")
        j = json.loads(m.group(1))
        secs = j["duration_us"] / 1e6
        errors += j["status_errors"] + j["connect"] + j["read"] + j["write"] + j["timeout"]
        rps += (j["requests"] - j["status_errors"]) / secs
        p99 = max(p99, j["p99_us"] / 1e3)
        wraps += j["wraps"] if setup != "bare" else 0  # bare keeps no ids
    requests = rps * secs
    return {
        "rps": rps, "p99": p99, "errors": errors, "wraps": wraps,
        "cpu_us": (cpu1 - cpu0) * 1e6 / CLK_TCK / max(requests, 1),
        "pg_us": (pg1 - pg0) * 1e6 / CLK_TCK / max(requests, 1),
    }


def main():
    if not PG:
        sys.exit("HOOKGATE_TEST_PG is not set: run under scripts/with-postgres.sh")
    for tool in ("wrk", "psql"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is required (apt-get install -y {'wrk' if tool == 'wrk' else 'postgresql-client'})")
    if not os.environ.get("SKIP_BUILD"):
        log("cargo build --release --bin hookgate --example bare")
        subprocess.run(["cargo", "build", "--release", "--bin", "hookgate", "--example", "bare"],
                       check=True, cwd=ROOT, stdout=sys.stderr)
    work = tempfile.mkdtemp(prefix="hookgate-replicas-")
    log("pre-signing requests in", work)
    files = {}
    for rep in range(REPS):
        for setup in SETUPS:
            n = replicas(setup)
            files[(rep, setup)] = []
            for i in range(n):
                base = os.path.join(work, f"req-{rep}-{setup}-{i}")
                subprocess.run([sys.executable, os.path.join(ROOT, "bench", "wrkbench.py"),
                                "gen", "--out", base, "--threads", str(wrk_threads(n)),
                                "--lines", str(LINES // n // wrk_threads(n)),
                                "--id-prefix", f"r{rep}{setup}{i}"], check=True)
                files[(rep, setup)].append(f"{base}-t%d.req")
    results = {s: [] for s in SETUPS}
    for rep in range(REPS):
        for setup in SETUPS:
            log(f"rep {rep + 1}/{REPS}: {setup}")
            results[setup].append(run(setup, rep, work, files))
    shutil.rmtree(work, ignore_errors=True)

    bare = [r["rps"] for r in results["bare"]]
    print(f"Unique events, {DURATION} per run, {CONNS} connections in all, {REPS} repetitions "
          f"(medians; every repetition in brackets).\n")
    print("| setup | events/s | ratio to bare | p99 ms | hookgate CPU µs/event | "
          "PostgreSQL CPU µs/event | errors |")
    print("|---|---|---|---|---|---|---|")
    names = {"bare": "bare actix + HMAC", "embedded": "1 × embedded", "pg1": "1 × postgres",
             "pg2": "2 × postgres", "pg3": "3 × postgres"}
    for setup in SETUPS:
        rs = results[setup]
        rps = [r["rps"] for r in rs]
        ratios = [r / b for r, b in zip(rps, bare)]
        cell = lambda xs, f: f"{format(statistics.median(xs), f)} [{', '.join(format(x, f) for x in xs)}]"
        print(f"| {names[setup]} | {cell(rps, '.0f')} | {cell(ratios, '.3f')} | "
              f"{cell([r['p99'] for r in rs], '.1f')} | "
              f"{cell([r['cpu_us'] for r in rs], '.0f') if setup != 'bare' else '–'} | "
              f"{cell([r['pg_us'] for r in rs], '.0f') if setup.startswith('pg') else '–'} | "
              f"{sum(r['errors'] for r in rs)}{' (ids wrapped)' if any(r['wraps'] for r in rs) else ''} |")


if __name__ == "__main__":
    main()
