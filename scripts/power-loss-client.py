#!/usr/bin/env python3
"""Load generator and checker for scripts/lazyfs-power-loss.sh (standard library only).

  load    send signed, unique generic events from several threads until the gateway goes
          away (it is SIGKILLed mid-load) or --seconds pass; write every event ID answered
          200 "accepted" to --acked, one per line, and print counters as JSON.
  verify  resend every ID in --ids (same body, fresh signature) and expect 200 "duplicate";
          write the IDs answered "accepted" (lost by the gateway) to --lost, and the IDs that
          got no answer at all to --unanswered; print counters as JSON.
  ready   wait until GET /ready answers 200.
  sink    print the event IDs in a file sink (JSON Lines), one per line; lines that do not
          parse are counted on stderr.

Events are the generic kind's: X-Webhook-ID, X-Webhook-Timestamp and
X-Webhook-Signature: sha256=<hex HMAC-SHA256 of the raw body> (providers/generic.toml).
"""

import argparse
import hashlib
import hmac
import http.client
import json
import queue
import sys
import threading
import time


def body_for(event_id):
    return json.dumps(
        {
            "id": event_id,
            "type": "post.created",
            "created_at": "2024-01-15T10:30:00Z",
            "data": {"object": {"id": "p-" + event_id, "title": "power loss"}},
        },
        separators=(",", ":"),
    ).encode()


def post(conn, instance, secret, event_id):
    """One signed POST; returns (http status, answer status or None). Raises on I/O errors."""
    body = body_for(event_id)
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    conn.request(
        "POST",
        "/webhooks/" + instance,
        body=body,
        headers={
            "Content-Type": "application/json",
            "X-Webhook-ID": event_id,
            "X-Webhook-Timestamp": str(int(time.time())),
            "X-Webhook-Signature": "sha256=" + signature,
        },
    )
    response = conn.getresponse()
    data = response.read()
    status = None
    if response.status == 200:
        try:
            status = json.loads(data).get("status")
        except ValueError:
            status = None
    return response.status, status


def connect(port, timeout):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def load(args):
    deadline = time.monotonic() + args.seconds
    lock = threading.Lock()
    acked = []
    counts = {"sent": 0, "accepted": 0, "unexpected_duplicate": 0, "rejected": {}, "stopped_by": {}}

    def worker(n):
        conn = connect(args.port, args.timeout)
        i = 0
        reason = "deadline"
        while time.monotonic() < deadline:
            event_id = "%s-w%d-%d" % (args.prefix, n, i)
            i += 1
            try:
                code, status = post(conn, args.instance, args.secret, event_id)
            except (OSError, http.client.HTTPException) as error:
                # The gateway was killed: this request's fate is unknown, and it is not counted.
                reason = type(error).__name__
                break
            with lock:
                counts["sent"] += 1
                if code == 200 and status == "accepted":
                    counts["accepted"] += 1
                    acked.append(event_id)
                elif code == 200 and status == "duplicate":
                    counts["unexpected_duplicate"] += 1
                else:
                    key = str(code)
                    counts["rejected"][key] = counts["rejected"].get(key, 0) + 1
        conn.close()
        with lock:
            counts["stopped_by"][reason] = counts["stopped_by"].get(reason, 0) + 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(args.acked, "w") as out:
        out.writelines(event_id + "\n" for event_id in acked)
    print(json.dumps(counts, sort_keys=True))
    return 0


def verify(args):
    with open(args.ids) as f:
        ids = [line.strip() for line in f if line.strip()]
    work = queue.Queue()
    for event_id in ids:
        work.put(event_id)
    lock = threading.Lock()
    lost, unanswered = [], []
    counts = {"checked": len(ids), "duplicate": 0, "lost": 0, "unanswered": 0}

    def worker():
        conn = connect(args.port, args.timeout)
        while True:
            try:
                event_id = work.get_nowait()
            except queue.Empty:
                break
            outcome = None
            for attempt in range(args.attempts):
                try:
                    code, status = post(conn, args.instance, args.secret, event_id)
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = connect(args.port, args.timeout)
                    time.sleep(0.2 * (attempt + 1))
                    continue
                if code == 200 and status in ("duplicate", "accepted"):
                    outcome = status
                    break
                time.sleep(0.2 * (attempt + 1))  # 503 and the like: the gateway says retry
            with lock:
                if outcome == "duplicate":
                    counts["duplicate"] += 1
                elif outcome == "accepted":
                    counts["lost"] += 1
                    lost.append(event_id)
                else:
                    counts["unanswered"] += 1
                    unanswered.append(event_id)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(args.lost, "w") as out:
        out.writelines(event_id + "\n" for event_id in lost)
    with open(args.unanswered, "w") as out:
        out.writelines(event_id + "\n" for event_id in unanswered)
    print(json.dumps(counts, sort_keys=True))
    return 0


def ready(args):
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        try:
            conn = connect(args.port, 2)
            conn.request("GET", "/ready")
            response = conn.getresponse()
            response.read()
            conn.close()
            if response.status == 200:
                return 0
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    print("gateway not ready after %ss" % args.seconds, file=sys.stderr)
    return 1


def sink(args):
    torn = 0
    try:
        f = open(args.path, "rb")
    except FileNotFoundError:
        return 0
    with f:
        for line in f:
            try:
                event_id = json.loads(line)["event_id"]
            except (ValueError, KeyError, TypeError):
                torn += 1
                continue
            print(event_id)
    if torn:
        print("%d sink line(s) did not parse" % torn, file=sys.stderr)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("load", "verify", "ready"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, required=True)
        if name != "ready":
            p.add_argument("--instance", default="demo")
            p.add_argument("--secret", required=True)
            p.add_argument("--workers", type=int, default=8)
            p.add_argument("--timeout", type=float, default=30)
    load_p, verify_p, ready_p = sub.choices["load"], sub.choices["verify"], sub.choices["ready"]
    load_p.add_argument("--prefix", required=True)
    load_p.add_argument("--seconds", type=float, default=30)
    load_p.add_argument("--acked", required=True)
    verify_p.add_argument("--ids", required=True)
    verify_p.add_argument("--lost", required=True)
    verify_p.add_argument("--unanswered", required=True)
    verify_p.add_argument("--attempts", type=int, default=10)
    ready_p.add_argument("--seconds", type=float, default=60)
    sink_p = sub.add_parser("sink")
    sink_p.add_argument("path")
    args = parser.parse_args()
    return {"load": load, "verify": verify, "ready": ready, "sink": sink}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
