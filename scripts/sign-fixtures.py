#!/usr/bin/env python3
"""Signs fixtures/<kind>/<case>.headers.json the way each provider does, independently of the
Rust code (Python's hmac, and the `cryptography` package for Ed25519 and ECDSA P-256), so the
golden test checks hookgate's verifiers against a second implementation. Every timestamp is the
instance's `signed_at`. Mailgun signs inside the body, so its body files are rewritten too.
Run after editing a fixture body: python3 scripts/sign-fixtures.py"""
import base64, datetime, hashlib, hmac, json, pathlib, re, tomllib, urllib.parse

ROOT = pathlib.Path(__file__).resolve().parent.parent / "fixtures"


def hexmac(secret: str, msg: bytes, algo=hashlib.sha256) -> str:
    return hmac.new(secret.encode(), msg, algo).hexdigest()


def b64mac(key: bytes, msg: bytes, algo=hashlib.sha256) -> str:
    return base64.b64encode(hmac.new(key, msg, algo).digest()).decode()


def header(headers: dict, name: str):
    """The name (as written in the file) and value of a header, looked up case-insensitively."""
    for k, v in headers.items():
        if k.lower() == name.lower():
            return k, v
    return None, None


def standard_webhooks(secret: str, ts: int, body: bytes, headers: dict, prefixes) -> dict:
    """Standard Webhooks: v1,<base64 HMAC-SHA256(base64decode(whsec), "{id}.{ts}.{body}")>."""
    for prefix in prefixes:
        name, msg_id = header(headers, prefix + "id")
        if msg_id is not None:
            break
    else:
        raise SystemExit(f"no {'/'.join(p + 'id' for p in prefixes)} header")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    sig = b64mac(key, f"{msg_id}.{ts}.".encode() + body)
    return {prefix + "timestamp": str(ts), prefix + "signature": "v1," + sig}


def twilio(secret: str, url: str, body: bytes) -> str:
    """base64 HMAC-SHA1(auth token, URL + name+value of each distinct form field, sorted)."""
    pairs = sorted(set(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True)))
    signed = url + "".join(name + value for name, value in pairs)
    return b64mac(secret.encode(), signed.encode(), hashlib.sha1)


def rfc3339(ts: int, previous) -> str:
    """signed_at as RFC 3339 UTC, keeping the fractional seconds the headers file had."""
    frac = re.search(r"(\.\d+)Z$", previous or "")
    stamp = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return stamp + (frac.group(1) if frac else "") + "Z"


# Issue 14, second wave (the kinds that reuse existing schemes): one signer per scheme.

def sign_svix(secret: str, ts: int, body: bytes, headers: dict, meta: dict) -> dict:
    """Resend and Clerk deliver through Svix: svix-* headers."""
    return standard_webhooks(secret, ts, body, headers, ["svix-"])


def sign_openai(secret: str, ts: int, body: bytes, headers: dict, meta: dict) -> dict:
    """OpenAI: Standard Webhooks webhook-* headers."""
    return standard_webhooks(secret, ts, body, headers, ["webhook-"])


def sign_x_hub_sha256(secret: str, ts: int, body: bytes, headers: dict, meta: dict) -> dict:
    """Jira Cloud and Bitbucket: X-Hub-Signature: sha256=<hex HMAC-SHA256 of the body>."""
    return {"X-Hub-Signature": "sha256=" + hexmac(secret, body)}


def sign_zendesk(secret: str, ts: int, body: bytes, headers: dict, meta: dict) -> dict:
    """base64 HMAC-SHA256 of the RFC 3339 timestamp followed by the body; the secret as written."""
    name, previous = header(headers, "X-Zendesk-Webhook-Signature-Timestamp")
    stamp = rfc3339(ts, previous)
    return {name or "X-Zendesk-Webhook-Signature-Timestamp": stamp,
            "X-Zendesk-Webhook-Signature": b64mac(secret.encode(), stamp.encode() + body)}


def sign_typeform(secret: str, ts: int, body: bytes, headers: dict, meta: dict) -> dict:
    return {"Typeform-Signature": "sha256=" + b64mac(secret.encode(), body)}


def sign_calendly(secret: str, ts: int, body: bytes, headers: dict, meta: dict) -> dict:
    return {"Calendly-Webhook-Signature": f"t={ts},v1=" + hexmac(secret, f"{ts}.".encode() + body)}


def sign_pagerduty(secret: str, ts: int, body: bytes, headers: dict, meta: dict) -> dict:
    """One v1= entry per configured secret, as PagerDuty sends while a secret is rotated."""
    secrets = meta["instance"].get("secrets") or [secret]
    return {"X-PagerDuty-Signature": ",".join("v1=" + hexmac(s, body) for s in secrets)}


def sign_body_hex(header_name: str):
    """Sentry, Razorpay, Lemon Squeezy: a bare hex HMAC-SHA256 of the body in one header."""
    return lambda secret, ts, body, headers, meta: {header_name: hexmac(secret, body)}


def sign_customerio(secret: str, ts: int, body: bytes, headers: dict, meta: dict) -> dict:
    return {"X-CIO-Timestamp": str(ts), "X-CIO-Signature": hexmac(secret, f"v0:{ts}:".encode() + body)}


def sign_telegram(secret: str, ts: int, body: bytes, headers: dict, meta: dict) -> dict:
    """Not a signature: setWebhook's secret_token, sent back verbatim."""
    return {"X-Telegram-Bot-Api-Secret-Token": secret}


SIGNERS_14B = {
    "openai": sign_openai,
    "resend": sign_svix,
    "clerk": sign_svix,
    "jira": sign_x_hub_sha256,
    "bitbucket": sign_x_hub_sha256,
    "zendesk": sign_zendesk,
    "typeform": sign_typeform,
    "calendly": sign_calendly,
    "pagerduty": sign_pagerduty,
    "sentry": sign_body_hex("Sentry-Hook-Signature"),
    "customerio": sign_customerio,
    "razorpay": sign_body_hex("X-Razorpay-Signature"),
    "lemonsqueezy": sign_body_hex("X-Signature"),
    "telegram": sign_telegram,
}


def sign(kind: str, secret: str, ts: int, body: bytes, headers: dict, meta: dict) -> dict:
    inst = meta["instance"]
    if kind in SIGNERS_14B:
        return SIGNERS_14B[kind](secret, ts, body, headers, meta)
    if kind == "generic":
        return {"X-Webhook-Signature": "sha256=" + hexmac(secret, body), "X-Webhook-Timestamp": str(ts)}
    if kind == "github":
        return {"X-Hub-Signature-256": "sha256=" + hexmac(secret, body)}
    if kind == "stripe":
        return {"Stripe-Signature": f"t={ts},v1=" + hexmac(secret, f"{ts}.".encode() + body)}
    if kind in ("pipedrive", "mailgun"):  # Basic Auth (added below); mailgun signs in the body
        return {}
    if kind == "shopify":
        # The newer deliveries send the lowercase, unprefixed header set.
        new_set = header(headers, "X-Shopify-Topic")[1] is None and header(headers, "shopify-topic")[1] is not None
        name = "shopify-hmac-sha256" if new_set else "X-Shopify-Hmac-Sha256"
        return {name: b64mac(secret.encode(), body)}
    if kind == "slack":
        return {"X-Slack-Request-Timestamp": str(ts),
                "X-Slack-Signature": "v0=" + hexmac(secret, f"v0:{ts}:".encode() + body)}
    if kind == "standard-webhooks":
        return standard_webhooks(secret, ts, body, headers, ["webhook-", "svix-"])
    if kind == "pusher":
        return {"X-Pusher-Signature": hexmac(secret, body)}
    if kind == "gitlab":
        secrets = inst.get("secrets") or []
        if header(headers, "webhook-id")[1] is not None:  # signing token, Standard Webhooks headers
            token = next(s for s in secrets if s.startswith("whsec_"))
            return standard_webhooks(token, ts, body, headers, ["webhook-"])
        return {"X-Gitlab-Token": next(s for s in secrets if not s.startswith("whsec_"))}
    if kind == "linear":
        return {"Linear-Signature": hexmac(secret, body)}
    if kind == "paddle":
        return {"Paddle-Signature": f"ts={ts};h1=" + hexmac(secret, f"{ts}:".encode() + body)}
    if kind == "twilio":
        return {"X-Twilio-Signature": twilio(secret, inst["public_url"], body)}
    if kind == "zoom":
        return {"x-zm-request-timestamp": str(ts),
                "x-zm-signature": "v0=" + hexmac(secret, f"v0:{ts}:".encode() + body)}
    if kind == "twitch":
        _, msg_id = header(headers, "Twitch-Eventsub-Message-Id")
        name, previous = header(headers, "Twitch-Eventsub-Message-Timestamp")
        stamp = rfc3339(ts, previous)
        sig = hexmac(secret, (msg_id + stamp).encode() + body)
        return {name or "Twitch-Eventsub-Message-Timestamp": stamp,
                "Twitch-Eventsub-Message-Signature": "sha256=" + sig}
    if kind == "square":
        return {"x-square-hmacsha256-signature": b64mac(secret.encode(), inst["public_url"].encode() + body)}
    if kind == "discord":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(meta["signing_key"]))
        return {"X-Signature-Ed25519": key.sign(str(ts).encode() + body).hex(),
                "X-Signature-Timestamp": str(ts)}
    if kind == "sendgrid":
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        key = ec.derive_private_key(int(meta["signing_key"], 16), ec.SECP256R1())
        # RFC 6979 deterministic nonces, so re-running the script leaves the files unchanged.
        der = key.sign(str(ts).encode() + body, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        return {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(der).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": str(ts)}
    signed = sign_second_wave(kind, secret, ts, body, headers, meta)
    if signed is not None:
        return signed
    raise SystemExit(f"no signer for kind {kind}")


def ed25519_b64(seed_hex: str, message: bytes) -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))
    return base64.b64encode(key.sign(message)).decode()


def sign_second_wave(kind: str, secret: str, ts: int, body: bytes, headers: dict, meta: dict):
    """Issue 14, scheme features (hubspot ... notion). None: not one of these kinds."""
    inst = meta["instance"]
    if kind == "hubspot":
        # v3: base64 HMAC-SHA256 of method + URI + body + timestamp (ms).
        ms = str(ts * 1000)
        signed = b"POST" + inst["public_url"].encode() + body + ms.encode()
        return {"X-HubSpot-Request-Timestamp": ms, "X-HubSpot-Signature-v3": b64mac(secret.encode(), signed)}
    if kind == "meta":
        return {"X-Hub-Signature-256": "sha256=" + hexmac(secret, body)}
    if kind == "intercom":
        return {"X-Hub-Signature": "sha1=" + hexmac(secret, body, hashlib.sha1)}
    if kind == "vercel":
        return {"x-vercel-signature": hexmac(secret, body, hashlib.sha1)}
    if kind == "workos":
        ms = ts * 1000
        return {"WorkOS-Signature": f"t={ms}, v1=" + hexmac(secret, f"{ms}.".encode() + body)}
    if kind == "telnyx":
        return {"telnyx-timestamp": str(ts),
                "telnyx-signature-ed25519": ed25519_b64(meta["signing_key"], str(ts).encode() + b"|" + body)}
    if kind in ("azure-eventgrid", "okta"):
        # A shared token; Event Grid's SubscriptionValidation is answered unsigned.
        if header(headers, "aeg-event-type")[1] == "SubscriptionValidation":
            return {}
        return {"Authorization": secret}
    if kind == "woocommerce":
        if body.startswith(b"webhook_id="):  # the ping is sent unsigned
            return {}
        return {"X-WC-Webhook-Signature": b64mac(secret.encode(), body)}
    if kind == "notion":
        if b'"verification_token"' in body:  # the one-time token delivery is unsigned
            return {}
        return {"X-Notion-Signature": "sha256=" + hexmac(secret, body)}
    return None


def sign_body(kind: str, secret: str, ts: int, body: bytes) -> bytes:
    """Kinds whose signature lives in the body: returns the body to write back."""
    if kind == "mailgun":
        obj = json.loads(body)
        sig = obj["signature"]
        sig["timestamp"] = str(ts)
        sig["signature"] = hexmac(secret, (sig["timestamp"] + sig["token"]).encode())
        return json.dumps(obj, separators=(",", ":")).encode()
    return body


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
        body = body_file.read_bytes()
        signed_body = sign_body(kind, secret, ts, body)
        if signed_body != body:
            body_file.write_bytes(signed_body)
        headers.update(sign(kind, secret, ts, signed_body, headers, meta))
        headers_file.write_text(json.dumps(headers, indent=2) + "\n")
        print(f"signed {headers_file.relative_to(ROOT)}")
