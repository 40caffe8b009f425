#!/usr/bin/env python3
"""Writes the small committed seed corpus, fuzz/corpus/<target>/, from fixtures/ and providers/
(and, for log_records, commit-log segments built here from the documented frame layout).

Run from anywhere: python3 fuzz/seed_corpus.py. Deterministic; rewrites the seed files only.
"""
import hashlib
import json
import pathlib
import struct
import zlib

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent
FIXTURES = ROOT / "fixtures"
CORPUS = FUZZ / "corpus"
MAX_BODY = 4096  # keep the committed corpus small

# The selector order of fuzz_targets/signature_headers.rs (KINDS).
SIGNATURE_KINDS = ["stripe", "paddle", "standard-webhooks", "slack", "twilio", "discord",
                   "sendgrid", "mailgun"]
TWILIO_URL = "https://hooks.example.com/webhooks/twilio"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def bodies(kind):
    """(name, body bytes, headers dict) of each recorded delivery of a kind."""
    out = []
    for headers_file in sorted((FIXTURES / kind).glob("*.headers.json")):
        stem = headers_file.name[: -len(".headers.json")]
        for ext in (".json", ".form"):
            body = FIXTURES / kind / (stem + ext)
            if body.exists() and body.stat().st_size <= MAX_BODY:
                out.append((stem, body.read_bytes(), json.loads(headers_file.read_text())))
    return out


def signature_seed(index, headers, body, url=None):
    lines = [f"{k}: {v}" for k, v in headers.items()]
    if url:
        lines.append(f"@url: {url}")
    return bytes([ord("0") + index]) + "\n".join(lines).encode() + b"\n\n" + body


# The commit log's on-disk format (src/store/log/record.rs, segment.rs), for log_records.
# Entry tags, in record.rs order.
(TAG_COMMIT, TAG_UNPROCESSABLE, TAG_PROBE, TAG_ATTEMPTS, TAG_REDELIVER, TAG_EXPIRE, TAG_PURGE,
 TAG_SEAL, TAG_TRUNCATED) = range(1, 10)


def field(b):
    """A length-prefixed field (u32 LE length, then the bytes)."""
    return struct.pack("<I", len(b)) + b


def commit_entry(key, receipt, body, claims, events, created_ms=1705314600000,
                 expires=1705401000):
    """claims: [(dedup key, gateway id)]; events: [(key, lane, not_before_ms, [sinks], env)]."""
    out = bytes([TAG_COMMIT]) + key + struct.pack("<qQI", created_ms, expires, len(claims))
    for dedup, gid in claims:
        out += field(dedup) + field(gid.encode())
    out += struct.pack("<I", len(events))
    for ekey, lane, not_before, sinks, envelope in events:
        out += ekey + field(lane) + struct.pack("<qI", not_before, len(sinks))
        out += b"".join(field(s.encode()) for s in sinks) + field(envelope)
    return out + field(receipt) + field(body)


def log_entries():
    """(name, payload) of each entry kind, shaped like the store writes them."""
    envelope = b'{"id":"01HM0FXTR3000000000000000","type":"post.created","data":{"a":1}}'
    receipt = b'{"id":"01HM0FXTR3000000000000001","instance":"demo","status":"accepted"}'
    commit = commit_entry(bytes(range(16)), receipt, b'{"a":1}',
                          [(b"demo\0evt_1", "01HM0FXTR3000000000000000")],
                          [(bytes(range(16, 32)), b"post:1", 0, ["audit", "app"], envelope)])
    return [
        ("commit", commit),
        ("commit-empty", commit_entry(b"\x01" * 16, b"{}", b"", [], [])),
        ("unprocessable", bytes([TAG_UNPROCESSABLE]) + b"\x03" * 16 + field(receipt)
         + field(b"not json")),
        ("probe", bytes([TAG_PROBE])),
        ("attempts", bytes([TAG_ATTEMPTS]) + struct.pack("<I", 2)
         + field(b'{"state":"delivered"}') + field(b'{"status":200}')
         + field(b'{"state":"retry"}') + field(b'{"status":503}')),
        ("redeliver-sink", bytes([TAG_REDELIVER]) + b"\x04" * 16 + struct.pack("<q", 7)
         + b"\x01" + field(b"app")),
        ("redeliver-all", bytes([TAG_REDELIVER]) + b"\x04" * 16 + struct.pack("<q", 7) + b"\x00"),
        ("expire", bytes([TAG_EXPIRE]) + struct.pack("<Q", 1705401000)),
        ("purge", bytes([TAG_PURGE]) + struct.pack("<I", 2) + b"\x05" * 16 + b"\x06" * 16),
        ("seal", bytes([TAG_SEAL])),
        ("truncated", bytes([TAG_TRUNCATED]) + struct.pack("<Q", 3)),
    ]


def lz4_length(n):
    """The extra length bytes of an LZ4 sequence (after the 15 of the token's nibble)."""
    return b"\xff" * ((n - 15) // 255) + bytes([(n - 15) % 255]) if n >= 15 else b""


def lz4_sequence(literals, offset=None, match=0):
    """One LZ4 block sequence: literals, then (unless it is the last) a match of `match` bytes
    `offset` back."""
    lit = min(len(literals), 15)
    if offset is None:
        return bytes([lit << 4]) + lz4_length(len(literals)) + literals
    m = min(match - 4, 15)
    return (bytes([lit << 4 | m]) + lz4_length(len(literals)) + literals
            + struct.pack("<H", offset) + lz4_length(match - 4))


def compressed_payload(raw, run_start, run_len):
    """A stored payload as record.rs's seal_payload writes it (tag 0xC0, raw length u32, LZ4
    block), for a raw entry whose bytes [run_start, run_start + run_len) repeat one byte: one
    literal of it, a match at offset 1, and the rest as the last literals."""
    assert len(set(raw[run_start:run_start + run_len])) == 1 and run_len > 20
    match_len = run_len - 1 - 12
    block = (lz4_sequence(raw[:run_start + 1], 1, match_len)
             + lz4_sequence(raw[run_start + 1 + match_len:]))
    return b"\xc0" + struct.pack("<I", len(raw)) + block


def log_frame(lsn, batch, payload):
    """len u32 | crc u32 (CRC-32 of lsn, batch, payload) | lsn u64 | batch u64 | payload | pad."""
    body = struct.pack("<QQ", lsn, batch) + payload
    frame = struct.pack("<II", len(payload), zlib.crc32(body)) + body
    return frame + bytes(-len(frame) % 8)


def log_header(number, after_lsn):
    """HGLOG001 | number u64 | after_lsn u64 | CRC-32 of those 24 bytes | 4 zero bytes."""
    h = b"HGLOG001" + struct.pack("<QQ", number, after_lsn)
    return h + struct.pack("<I", zlib.crc32(h)) + bytes(4)


def log_frames(after_lsn, writes):
    """Frames of `writes` (each a list of payloads, one batch) with lsns from after_lsn + 1."""
    out, lsn = b"", after_lsn
    for payloads in writes:
        batch = lsn + 1
        for payload in payloads:
            lsn += 1
            out += log_frame(lsn, batch, payload)
    return out, lsn


def log_seeds():
    """Inputs of the log_records target: whole segments, frames alone (read after the target's
    own header too), and bare entry payloads."""
    entries = dict(log_entries())
    seeds = [(f"entry-{name}", payload) for name, payload in entries.items()]
    seeds += [(f"frame-{name}", log_frame(1, 1, payload)) for name, payload in entries.items()]
    writes = [[entries["commit"]], [entries["commit"], entries["commit-empty"]],
              [entries["attempts"]], [entries["probe"]], [entries["redeliver-sink"]],
              [entries["expire"], entries["purge"]]]
    frames, last = log_frames(0, writes)
    seeds.append(("frames-clean", frames + bytes(64)))
    seeds.append(("segment-clean", log_header(0, 0) + frames + bytes(64)))
    sealed, _ = log_frames(last, [[entries["truncated"]]])
    seal = log_frame(last + 1, last + 1, entries["seal"])
    seeds.append(("segment-sealed", log_header(0, 0) + frames + sealed + seal + bytes(32)))
    later, _ = log_frames(41, [[entries["probe"], entries["unprocessable"]], [entries["commit"]]])
    seeds.append(("segment-later", log_header(7, 41) + later + bytes(32)))
    # A torn last write: the second frame of the last batch cut short, zeros after it.
    torn = frames + log_frames(last, [[entries["commit"], entries["commit"]]])[0][:-40]
    seeds.append(("segment-torn", log_header(0, 0) + torn + bytes(48)))
    # A whole last record whose padding alone is cut off (the file ends 7 bytes early).
    cut, _ = log_frames(last, [[entries["probe"]]])
    seeds.append(("segment-padding-cut", log_header(0, 0) + frames + cut[:-7]))
    # The largest lsn before a record (an overflow in scan once, fixed in 5af2ea3).
    seeds.append(("segment-after-lsn-max", log_header(0, 2**64 - 1)
                  + log_frame(0, 2**64 - 1, entries["probe"]) + bytes(32)))
    # Payloads of 512 bytes or more are stored LZ4-compressed when that saves a tenth.
    receipt = b'{"id":"01HM0FXTR3000000000000002","status":"unprocessable"}'
    body = b"x" * 1200
    raw = bytes([TAG_UNPROCESSABLE]) + b"\x07" * 16 + field(receipt) + field(body)
    packed = compressed_payload(raw, len(raw) - len(body), len(body))
    seeds.append(("entry-compressed", packed))
    seeds.append(("frame-compressed", log_frame(1, 1, packed)))
    more, _ = log_frames(last, [[packed, entries["probe"]]])
    seeds.append(("segment-compressed", log_header(0, 0) + frames + more + bytes(32)))
    # Damage in the middle: a flipped payload byte with a whole later write after it.
    damaged = bytearray(frames)
    damaged[24 + 5] ^= 0xFF
    seeds.append(("segment-damaged", log_header(0, 0) + bytes(damaged) + bytes(16)))
    return seeds


def main():
    for i, kind in enumerate(SIGNATURE_KINDS):
        for stem, body, headers in bodies(kind):
            url = TWILIO_URL if kind == "twilio" else None
            write("signature_headers", f"{kind}-{stem}", signature_seed(i, headers, body, url))
    # A few hand-made header shapes the fixtures lack.
    extra = {
        "stripe-multi-v1": (0, {"Stripe-Signature": "t=1705314600,v1=00,v0=ff,v1=abcd"}, b"{}"),
        "paddle-ms": (1, {"Paddle-Signature": "ts=1705314600000;h1=00"}, b"{}"),
        "standard-v1a": (2, {"webhook-id": "msg_1", "webhook-timestamp": "2024-01-15T10:30:00Z",
                             "webhook-signature": "v1a,AAAA v1,AAAA v2,x"}, b"{}"),
        "slack-neg": (3, {"X-Slack-Signature": "v0=00", "X-Slack-Request-Timestamp": "-1"}, b""),
        "twilio-json": (4, {"X-Twilio-Signature": "AAAA", "Content-Type": "application/json"},
                        b"{}"),
        "discord-short": (5, {"X-Signature-Ed25519": "00", "X-Signature-Timestamp": "1"}, b"{}"),
        "sendgrid-raw": (6, {"X-Twilio-Email-Event-Webhook-Signature": "AAAA",
                             "X-Twilio-Email-Event-Webhook-Timestamp": "1705314600"}, b"[]"),
    }
    for name, (i, headers, body) in extra.items():
        url = TWILIO_URL + "?bodySHA256=" + hashlib.sha256(body).hexdigest() if i == 4 else None
        write("signature_headers", name, signature_seed(i, headers, body, url))

    for toml in sorted((ROOT / "providers").glob("*.toml")):
        write("provider_definition", toml.stem, toml.read_bytes())

    for kind_dir in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        for stem, body, _ in bodies(kind_dir.name):
            write("normaliser", f"{kind_dir.name}-{stem}", body)

    for kind in ["generic", "stripe", "standard-webhooks", "sendgrid"]:
        for stem, body, _ in bodies(kind):
            if body.lstrip().startswith((b"{", b"[")):
                write("pipeline", f"{kind}-{stem}", body)

    for name, data in log_seeds():
        write("log_records", name, data)


if __name__ == "__main__":
    main()
