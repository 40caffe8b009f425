#!/usr/bin/env python3
"""Signs fixtures/<kind>/<case>.headers.json the way each provider does, independently of the
Rust code (Python's hmac), so the golden test checks hookgate's verifiers against a second
implementation. Run after editing a fixture body: python3 scripts/sign-fixtures.py"""
import base64, hashlib, hmac, json, pathlib, tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "fixtures"


def hexmac(secret: str, msg: bytes, algo=hashlib.sha256) -> str:
    return hmac.new(secret.encode(), msg, algo).hexdigest()


def sign(kind: str, secret: str, ts: int, body: bytes, headers: dict) -> dict:
    if kind == "generic":
        return {"X-Webhook-Signature": "sha256=" + hexmac(secret, body), "X-Webhook-Timestamp": str(ts)}
    if kind == "github":
        return {"X-Hub-Signature-256": "sha256=" + hexmac(secret, body)}
    if kind == "stripe":
        return {"Stripe-Signature": f"t={ts},v1=" + hexmac(secret, f"{ts}.".encode() + body)}
    if kind == "pipedrive":
        return {}
    raise SystemExit(f"no signer for kind {kind}")


for instance_file in sorted(ROOT.glob("*/instance.toml")):
    meta = tomllib.loads(instance_file.read_text())
    inst = meta["instance"]
    kind, ts = inst["kind"], meta["signed_at"]
    secret = (inst.get("secrets") or [""])[0]
    for headers_file in sorted(instance_file.parent.glob("*.headers.json")):
        case = headers_file.name[: -len(".headers.json")]
        body_file = next(p for p in instance_file.parent.glob(case + ".*")
                         if not p.name.endswith((".headers.json", ".expected.json")))
        headers = json.loads(headers_file.read_text())
        if "basic_auth" in inst:
            cred = f'{inst["basic_auth"]["username"]}:{inst["basic_auth"]["password"]}'
            headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        headers.update(sign(kind, secret, ts, body_file.read_bytes(), headers))
        headers_file.write_text(json.dumps(headers, indent=2) + "\n")
        print(f"signed {headers_file.relative_to(ROOT)}")
