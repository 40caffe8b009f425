#!/usr/bin/env python3
"""Writes the small committed seed corpus, fuzz/corpus/<target>/, from fixtures/ and providers/.

Run from anywhere: python3 fuzz/seed_corpus.py. Deterministic; rewrites the seed files only.
"""
import hashlib
import json
import pathlib

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


if __name__ == "__main__":
    main()
