#!/usr/bin/env python3
"""Helpers for bench/run.sh: pre-sign requests for wrk, send one, record and report results.

    wrkbench.py gen --out F --threads T --lines N --id-prefix P      # unique: F-t<i>.req per thread
    wrkbench.py gen --out F --dup --id-prefix P                      # one request, F.req
    wrkbench.py send F.req PORT                                      # send one, fail unless 2xx
    wrkbench.py record RESULTS key=value ... [--wrk LOG]             # append one JSON line
    wrkbench.py metrics PORT                                         # "<ok> <duplicates>"
    wrkbench.py report RESULTS                                       # Markdown to stdout

A request file is a sequence of complete raw HTTP/1.1 requests of one fixed length (same
headers, fixed-width id, body padded to a fixed size), so bench/signed.lua can slice record k
out of one string without parsing. The generic kind's contract: `X-Webhook-Signature:
sha256=<hex HMAC-SHA256 of the raw body>`, event id from `X-Webhook-ID` (else body `/id`); we
send both, equal. No `X-Webhook-Timestamp`: it is optional, and without it a pre-signed request
never goes stale.
"""

import argparse
import hashlib
import hmac
import json
import os
import re
import socket
import statistics
import sys

SECRET = os.environ.get("HOOKGATE_DEMO_SECRET", "hookgate-demo-secret-do-not-use-in-production")
PATH = "/webhooks/demo"
BODY_BYTES = int(os.environ.get("BODY_BYTES", "1024"))
FILLER = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
          "incididunt ut labore et dolore magna aliqua. ") * 64


def body_for(event_id, size=BODY_BYTES):
    head = ('{"id":"%s","type":"post.created","created_at":"2024-01-15T10:30:00Z",'
            '"data":{"object":{"id":"post_%s","title":"load test","text":"' % (event_id, event_id))
    tail = '"}}}'
    room = size - len(head) - len(tail)
    if room < 0:
        sys.exit(f"BODY_BYTES={size} is too small for id {event_id!r}")
    return (head + FILLER[:room] + tail).encode()


def raw_request(event_id):
    body = body_for(event_id)
    sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    # Host without a port: the same file serves hookgate (8080) and bare (18090); neither
    # routes on Host.
    head = (f"POST {PATH} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\n"
            f"X-Webhook-ID: {event_id}\r\n"
            f"X-Webhook-Signature: sha256={sig}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"\r\n").encode()
    return head + body


def cmd_gen(a):
    if a.dup:
        with open(a.out + ".req", "wb") as f:
            f.write(raw_request(f"{a.id_prefix}-dup"))
        return
    length = None
    for t in range(a.threads):
        with open(f"{a.out}-t{t}.req", "wb", buffering=1 << 22) as f:
            # Thread t owns ids <prefix>-t<t>-<n>: disjoint across threads; the prefix carries
            # the run nonce and the run name, so runs never share an id.
            for n in range(a.lines):
                r = raw_request(f"{a.id_prefix}-t{t}-{n:08d}")
                if length is None:
                    length = len(r)
                elif len(r) != length:
                    sys.exit("request length varies; ids must be fixed-width")
                f.write(r)


def cmd_send(a):
    data = open(a.file, "rb").read()
    head_end = data.index(b"\r\n\r\n") + 4
    clen = int(re.search(rb"Content-Length: (\d+)", data[:head_end]).group(1))
    with socket.create_connection(("127.0.0.1", a.port), timeout=30) as s:
        s.sendall(data[:head_end + clen])
        reply = b""
        while b"\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    status = reply.split(b"\r\n", 1)[0].decode(errors="replace")
    print(status, file=sys.stderr)
    code = int(status.split()[1]) if len(status.split()) > 1 else 0
    sys.exit(0 if 200 <= code < 300 else 1)


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(log):
    """wrk's own text (--latency) plus the WRKJSON line from bench/signed.lua's done()."""
    text = open(log, errors="replace").read()
    out = {"non2xx": 0, "socket_errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["rps_text"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", text)
    if m:
        out["requests_text"] = int(m.group(1))
    for p in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{p}%\s+([\d.]+\w+)", text, re.M)
        if m:
            out[f"p{p}_ms_text"] = ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"^WRKJSON (\{.*\})$", text, re.M)
    if not m:
        sys.exit(f"{log}: no WRKJSON line (did wrk run bench/signed.lua?)")
    j = json.loads(m.group(1))
    out.update(j)
    out["rps"] = j["requests"] / (j["duration_us"] / 1e6)
    for p in ("50", "75", "90", "99", "999"):
        out[f"p{p}_ms"] = j[f"p{p}_us"] / 1e3
    out["max_ms"] = j["max_us"] / 1e3
    # Errors as the worst of wrk's text and its summary object.
    out["non2xx"] = max(out["non2xx"], j["status_errors"])
    out["socket_errors"] = max(out["socket_errors"],
                               j["connect"] + j["read"] + j["write"] + j["timeout"])
    out["ok"] = j["requests"] - out["non2xx"]
    return out


def cmd_record(a):
    rec = {}
    for kv in a.kv:
        k, _, v = kv.partition("=")
        try:
            rec[k] = int(v)
        except ValueError:
            try:
                rec[k] = float(v)
            except ValueError:
                rec[k] = v
    if a.wrk:
        rec.update(parse_wrk(a.wrk))
        rec["log"] = a.wrk
    with open(a.results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    if a.wrk:
        flag = " ERRORS" if rec["non2xx"] or rec["socket_errors"] else ""
        print(f"   {rec.get('server')} {rec.get('mode')} c={rec.get('conns')}: "
              f"{rec['rps']:.0f} req/s, p50 {rec['p50_ms']:.3f} ms, p99 {rec['p99_ms']:.3f} ms, "
              f"non-2xx {rec['non2xx']}, socket errors {rec['socket_errors']}"
              + (f", id wraps {rec['wraps']}" if rec.get("mode") == "unique" else "")
              + flag, file=sys.stderr)


def metric_sum(text, name, **labels):
    """Sum of a Prometheus counter's samples whose labels include `labels`; None if absent."""
    total, seen = 0.0, False
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})?\s+(\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
            seen = True
    return total if seen else None


def cmd_metrics(a):
    """Print `<ok> <duplicates>` of instance demo from hookgate's /metrics (`- -` if absent)."""
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{a.port}/metrics", timeout=10) as r:
            text = r.read().decode(errors="replace")
    except OSError as e:
        print(f"/metrics: {e}", file=sys.stderr)
        text = ""
    ok = metric_sum(text, "hookgate_requests_total", provider="demo", outcome="ok")
    dup = metric_sum(text, "hookgate_duplicates_total", provider="demo")
    print("-" if ok is None else int(ok), "-" if dup is None else int(dup))


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def cmd_report(a):
    recs = [json.loads(l) for l in open(a.results) if l.strip()]
    meta = next((r for r in recs if r.get("kind") == "meta"), {})
    runs = [r for r in recs if r.get("kind") == "run"]
    reps = sorted({r["rep"] for r in runs})
    res = {r["rep"]: r for r in recs if r.get("kind") == "resources"}
    ips = next((r for r in recs if r.get("kind") == "ips"), None)
    fin = next((r for r in recs if r.get("kind") == "final"), {})

    def run(rep, server, mode, conns):
        for r in runs:
            if (r["rep"], r["server"], r["mode"], r["conns"]) == (rep, server, mode, conns):
                return r
        return None

    rows = []

    def fmt(v, spec):
        if v is None:
            return "-"
        return format(v, spec)

    def row(label, values, spec, suffix="", agg=med):
        cells = [fmt(v, spec) + (suffix if v is not None else "") for v in values]
        a = agg([v for v in values if v is not None]) if any(v is not None for v in values) else None
        rows.append(f"| {label} | **{fmt(a, spec)}{suffix if a is not None else ''}** | "
                    + " | ".join(cells) + " |")

    def per_rep(fn):
        return [fn(rep) for rep in reps]

    def field(server, mode, conns, key):
        return per_rep(lambda rep: (run(rep, server, mode, conns) or {}).get(key))

    def ratio(mode, conns):
        def one(rep):
            h, b = run(rep, "hookgate", mode, conns), run(rep, "bare", mode, conns)
            return h["rps"] / b["rps"] if h and b and b["rps"] else None
        return per_rep(one)

    def cpu_per_req(server, mode):
        def one(rep):
            r = run(rep, server, mode, 64)
            return r["cpu_us"] / r["requests"] if r and r.get("requests") else None
        return per_rep(one)

    modes = [("unique", "unique events"), ("dup", "duplicates")]
    for mode, name in modes:
        for conns in (64, 1):
            row(f"bare, {name}, c={conns}: req/s", field("bare", mode, conns, "rps"), ".0f")
            row(f"hookgate, {name}, c={conns}: req/s", field("hookgate", mode, conns, "rps"), ".0f")
            row(f"**hookgate / bare, {name}, c={conns}**", ratio(mode, conns), ".0%")
    for mode, name in modes:
        for conns in (1, 64):
            for server in ("bare", "hookgate"):
                for p in ("50", "99"):
                    row(f"{server}, {name}, c={conns}: p{p} latency", field(server, mode, conns, f"p{p}_ms"),
                        ".3f", " ms")
    for mode, name in modes:
        row(f"hookgate CPU per request, {name}, c=64 (incl. background work until idle)",
            cpu_per_req("hookgate", mode), ".0f", " µs")
        row(f"bare CPU per request, {name}, c=64",
            cpu_per_req("bare", mode), ".0f", " µs")
    tck = meta.get("clk_tck", 100)

    def others(rep, fn):
        vals = []
        for r in runs:
            if r["rep"] == rep and r.get("wall_s"):
                other = (r["machine_ticks"] - r["server_ticks"]) / tck - r["wrk_ms"] / 1e3
                vals.append(max(other, 0.0) / r["wall_s"])
        return fn(vals) if vals else None

    row("wrk's own CPU during hookgate unique c=64 (cores)",
        per_rep(lambda rep: (lambda r: r["wrk_ms"] / 1e3 / r["wall_s"] if r and r.get("wall_s") else None)
                (run(rep, "hookgate", "unique", 64))), ".2f")
    row("wrk's own CPU during bare unique c=64 (cores)",
        per_rep(lambda rep: (lambda r: r["wrk_ms"] / 1e3 / r["wall_s"] if r and r.get("wall_s") else None)
                (run(rep, "bare", "unique", 64))), ".2f")
    other_mean = per_rep(lambda rep: others(rep, statistics.mean))
    other_max = per_rep(lambda rep: others(rep, max))
    row("CPU of other processes on the machine during the runs (cores, mean of the rep)", other_mean, ".2f")
    row("CPU of other processes on the machine during the runs (cores, worst run of the rep)", other_max, ".2f")
    row("hookgate: seconds until idle after the unique c=64 run (background work)",
        field("hookgate", "unique", 64, "idle_wait_s"), ".1f", " s")
    row("hookgate peak RSS (VmHWM) by the end of the rep (**peak**, not median)",
        per_rep(lambda rep: res.get(rep, {}).get("hg_hwm_kb", 0) / 1024 or None), ".1f", " MB", agg=max)
    row("bare peak RSS (VmHWM) by the end of the rep (**peak**)",
        per_rep(lambda rep: res.get(rep, {}).get("bare_hwm_kb", 0) / 1024 or None), ".1f", " MB", agg=max)
    row("hookgate bytes written per unique event (/proc io write_bytes)",
        per_rep(lambda rep: res[rep]["write_bytes"] / res[rep]["unique_ok"] if rep in res and res[rep].get("unique_ok") else None), ".0f", " B")
    row("hookgate bytes written per duplicate (/proc io write_bytes)",
        per_rep(lambda rep: res[rep]["dup_write_bytes"] / res[rep]["dup_ok"] if rep in res and res[rep].get("dup_ok") else None), ".1f", " B")
    row("bytes on disk per stored event (du -sb of the data dir / events stored so far; **last**, not median)",
        per_rep(lambda rep: res[rep]["du_bytes"] / res[rep]["stored_total"] if rep in res and res[rep].get("stored_total") else None),
        ".0f", " B", agg=lambda v: v[-1])
    row("non-2xx responses, bare (all runs of the rep; **total**, not median)",
        per_rep(lambda rep: sum(r["non2xx"] for r in runs if r["rep"] == rep and r["server"] == "bare")), "d", agg=sum)
    row("non-2xx responses, hookgate (all runs of the rep; **total**, not median)",
        per_rep(lambda rep: sum(r["non2xx"] for r in runs if r["rep"] == rep and r["server"] == "hookgate")), "d", agg=sum)
    row("socket errors (connect/read/write/timeout), both servers (**total**)",
        per_rep(lambda rep: sum(r["socket_errors"] for r in runs if r["rep"] == rep)), "d", agg=sum)

    print(f"wrk harness (`bench/run.sh`), {meta.get('date', '?')}; hookgate `{meta.get('hookgate_bin', '?')}` "
          f"({meta.get('hookgate_rev', '?')}); wrk {meta.get('wrk_threads', '?')} threads, "
          f"{meta.get('duration', '?')} per c=64 run, {meta.get('c1_duration', '?')} per c=1 run, "
          f"{len(reps)} repetition(s), servers alternated (bare, hookgate) in each; "
          f"{meta.get('nproc', '?')} CPUs, load average {meta.get('load_start', '?')} at start, "
          f"{fin.get('load_end', '?')} at end.")
    print()
    print("| measure | median | " + " | ".join(f"rep {r}" for r in reps) + " |")
    print("|---|---|" + "---|" * len(reps))
    for r in rows:
        print(r)
    if ips:
        print(f"| hookgate peak RSS, {ips['distinct_ips']} distinct client IPs via a trusted proxy "
              f"(wrk, {ips['rps']:.0f} req/s, {ips['non2xx']} non-2xx incl. 429) | **{ips['hwm_kb']/1024:.1f} MB** |"
              + " |" * len(reps))
    print()
    stored, acked, dups_unique = fin.get("stored_total"), fin.get("acked_total"), fin.get("unique_dups")
    print(f"Unique events stored by hookgate (its /metrics: ok minus duplicates, incl. the one duplicate): {stored}; "
          f"answered 2xx to wrk in the unique runs: {acked} (wrk does not count requests still in flight when a run "
          f"ends). Requests of the unique runs that hookgate answered as duplicates: {dups_unique} (must be 0).")

    flags = []
    for r in runs:
        where = f"rep {r['rep']} {r['server']} {r['mode']} c={r['conns']}"
        if r["non2xx"]:
            flags.append(f"{where}: {r['non2xx']} non-2xx responses")
        if r["socket_errors"]:
            flags.append(f"{where}: {r['socket_errors']} socket errors")
        if r["server"] == "hookgate" and r["mode"] == "unique" and r.get("wraps"):
            flags.append(f"{where}: the pre-signed ids ran out and wrapped {r['wraps']} time(s), so some "
                         f"'unique' requests were duplicates; raise LINES / C1_LINES")
        if r["requests"] == 0:
            flags.append(f"{where}: no requests completed")
    if isinstance(dups_unique, int) and dups_unique > 0:
        flags.append(f"hookgate answered {dups_unique} requests of the unique runs as duplicates")
    for k, v in fin.items():
        if k.startswith("warn_"):
            flags.append(v)
    if ips and ips["non2xx"]:
        flags.append(f"distinct-IP run: {ips['non2xx']} non-2xx responses (429 = rate limited)")
    if ips and ips["distinct_ips"] < ips.get("ip_count", 0):
        print()
        print(f"Note: the distinct-IP run reached {ips['distinct_ips']} of the {ips['ip_count']} addresses "
              f"it was given; raise IP_DURATION to reach them all.")
    busiest = max((x for x in other_max if x is not None), default=None)
    if busiest is not None and busiest > 0.2:
        print()
        print(f"Note: other processes used up to {busiest:.2f} of the {meta.get('nproc', '?')} CPUs during "
              f"some runs (see the rows above); those runs measured a shared machine.")
    if flags:
        print()
        print("**FLAGGED — do not quote these numbers without reading this:**")
        for f in flags:
            print(f"- {f}")
    sys.exit(3 if flags else 0)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--out", required=True)
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--lines", type=int, default=200_000)
    g.add_argument("--id-prefix", required=True)
    g.add_argument("--dup", action="store_true")
    s = sub.add_parser("send")
    s.add_argument("file")
    s.add_argument("port", type=int)
    r = sub.add_parser("record")
    r.add_argument("results")
    r.add_argument("kv", nargs="*")
    r.add_argument("--wrk")
    m = sub.add_parser("metrics")
    m.add_argument("port", type=int)
    p = sub.add_parser("report")
    p.add_argument("results")
    a = ap.parse_args()
    {"gen": cmd_gen, "send": cmd_send, "record": cmd_record, "metrics": cmd_metrics,
     "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
