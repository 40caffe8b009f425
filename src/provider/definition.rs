//! The on-disk shape of `providers/<kind>.toml`: plain data, deserialised strictly.
//!
//! Nothing here is used on the request path. [`super::kind`] compiles a definition once at
//! startup into a [`super::kind::Kind`] with parsed sources, templates and header names; every
//! compile error names the file and the key.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A provider definition file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// One line saying who sends this and how it is signed.
    #[serde(default)]
    pub description: String,
    /// How the body is encoded.
    #[serde(default)]
    pub body: BodyFormat,
    /// How deliveries are authenticated.
    pub signature: SignatureDef,
    /// Requests answered as handshakes instead of being stored (checked in order).
    #[serde(default)]
    pub handshake: Vec<HandshakeDef>,
    /// Payload formats, tried in order; the first whose `when` matches normalises the event.
    #[serde(default)]
    pub event: Vec<EventDef>,
    /// The answer to a stored (or duplicate) event instead of hookgate's own JSON, for
    /// providers that require a body of their own (Discord interactions: `{"type":5}`).
    /// An instance in `mode = "sync"` with `reply_from` answers with its sink's body instead.
    pub accepted_reply: Option<AcceptedReplyDef>,
}

/// `accepted_reply = { body = '{"type":5}', content_type = "application/json" }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptedReplyDef {
    pub body: String,
    #[serde(default = "default_json_content_type")]
    pub content_type: String,
}

fn default_json_content_type() -> String {
    "application/json".to_owned()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    #[default]
    Json,
    /// `application/x-www-form-urlencoded`; fields become a JSON object of strings.
    Form,
    /// Form when the `Content-Type` says so, JSON otherwise (Twilio sends both).
    Auto,
}

/// `[signature]`: the closed set of schemes hookgate implements.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "scheme", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SignatureDef {
    /// An HMAC of a signed string built from the body, headers, timestamp and URL.
    Hmac {
        /// `sha1`, `sha256` or `sha512`.
        #[serde(default)]
        algorithm: HmacAlgorithm,
        /// Where the signature is: sources, first present wins (`header:X-Sig`, `/body/pointer`).
        #[serde(deserialize_with = "one_or_many")]
        signature: Vec<String>,
        /// Text before the encoded MAC, such as `sha256=`.
        #[serde(default)]
        prefix: String,
        /// Accept the signature with or without `prefix`.
        #[serde(default)]
        prefix_optional: bool,
        /// The signature header may carry several signatures separated by this (PagerDuty's
        /// `v1=..,v1=..` during a rotation); the header may also be repeated. Entries without
        /// `prefix` or that do not decode are skipped; any entry may match.
        separator: Option<String>,
        /// `hex` or `base64`.
        #[serde(default)]
        encoding: SignatureEncoding,
        /// What is signed: `{body}`, `{timestamp}`, `{url}`, `{header:Name}`, `{/pointer}` and
        /// literal text.
        #[serde(default = "default_signed")]
        signed: String,
        /// Where the timestamp is (a header or a body pointer), checked against the tolerance.
        timestamp: Option<String>,
        /// How the timestamp is written, for signing.
        #[serde(default)]
        timestamp_format: TimestampFormat,
        /// Reject deliveries without a timestamp.
        #[serde(default)]
        timestamp_required: bool,
        /// Default tolerance in seconds, past and future.
        tolerance_secs: Option<u64>,
        /// The provider signs fields, not the body (Mailgun); say so explicitly.
        #[serde(default)]
        unsigned_body: bool,
        /// A body value that may be used once only (Mailgun's `token`): a second delivery with
        /// the same value and a different event is refused.
        replay_guard: Option<String>,
    },
    /// A header of `key=value` items holding a timestamp and one or more MACs
    /// (`Paddle-Signature: ts=..;h1=..`), or only MACs when `timestamp_key` is not given
    /// (`X-PagerDuty-Signature: v1=..,v1=..`; `signed` then defaults to `{body}`).
    KeyedHmac {
        header: String,
        #[serde(default = "default_item_separator")]
        separator: String,
        timestamp_key: Option<String>,
        signature_key: String,
        /// Default `{timestamp}.{body}`, or `{body}` without a `timestamp_key`.
        signed: Option<String>,
        #[serde(default)]
        algorithm: HmacAlgorithm,
        #[serde(default)]
        encoding: SignatureEncoding,
        /// How the signer writes the timestamp (`unix-ms` for WorkOS); either is read.
        #[serde(default)]
        timestamp_format: TimestampFormat,
        tolerance_secs: Option<u64>,
    },
    /// `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]` over `{t}.{body}`: a preset of
    /// `keyed-hmac`.
    Stripe {
        #[serde(default = "default_stripe_header")]
        header: String,
        tolerance_secs: Option<u64>,
    },
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<b64>`),
    /// also under other header prefixes (`svix-`); `whsec_` secrets and `whpk_` Ed25519 keys.
    StandardWebhooks {
        #[serde(default = "default_standard_prefixes")]
        header_prefixes: Vec<String>,
        tolerance_secs: Option<u64>,
    },
    /// Twilio: base64 HMAC-SHA1 of the public URL plus sorted form fields (or of the URL
    /// carrying `bodySHA256` for JSON bodies). Instances set `public_url`.
    Twilio {
        #[serde(default = "default_twilio_header")]
        header: String,
    },
    /// An Ed25519 signature (public keys in `secrets`, hex or base64).
    Ed25519 {
        #[serde(deserialize_with = "one_or_many")]
        signature: Vec<String>,
        #[serde(default)]
        encoding: SignatureEncoding,
        #[serde(default = "default_signed")]
        signed: String,
        timestamp: Option<String>,
        tolerance_secs: Option<u64>,
    },
    /// An ECDSA P-256 / SHA-256 signature, DER or raw r||s (public keys in `secrets`, base64
    /// DER SubjectPublicKeyInfo or PEM).
    EcdsaP256 {
        #[serde(deserialize_with = "one_or_many")]
        signature: Vec<String>,
        #[serde(default)]
        encoding: SignatureEncoding,
        #[serde(default = "default_signed")]
        signed: String,
        timestamp: Option<String>,
        tolerance_secs: Option<u64>,
    },
    /// No signature: the instance's Basic Auth is the authentication (and is then required).
    Basic,
    /// A shared token sent verbatim in a header, or in a query parameter (Azure Event Grid's
    /// `?code=`), compared in constant time. The header wins when both are named and present.
    Token {
        header: Option<String>,
        query: Option<String>,
    },
    /// Several schemes; the first whose signature header is present decides.
    OneOf { schemes: Vec<SignatureDef> },
}

fn default_signed() -> String {
    "{body}".to_owned()
}

fn default_item_separator() -> String {
    ",".to_owned()
}

fn default_stripe_header() -> String {
    "Stripe-Signature".to_owned()
}

fn default_twilio_header() -> String {
    "X-Twilio-Signature".to_owned()
}

fn default_standard_prefixes() -> Vec<String> {
    vec!["webhook-".to_owned(), "svix-".to_owned()]
}

/// A string or a list of strings.
pub fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// How a timestamp is written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TimestampFormat {
    /// Unix seconds.
    #[default]
    Unix,
    /// Unix milliseconds.
    UnixMs,
    /// RFC 3339 (`2024-01-15T10:30:00.123Z`).
    Rfc3339,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    Sha1,
    #[default]
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
}

/// `[[handshake]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandshakeDef {
    /// Name used in logs and in the reply.
    pub name: String,
    /// Which requests are this handshake.
    pub when: ConditionDef,
    /// `POST` (default), `GET` or `OPTIONS`: GET handshakes (Meta, Okta) and OPTIONS ones
    /// (CloudEvents webhook validation) are answered on `/webhooks/{name}` after the access
    /// checks, without a body; their `when` reads headers and `query:`.
    #[serde(default)]
    pub method: HandshakeMethod,
    /// A GET handshake authenticated by a token the provider echoes back (Meta's
    /// `query:hub.verify_token`), compared with the instance's `verify_token`; a mismatch is
    /// 403 `invalid_verify_token`. Without it a GET handshake is verified by the kind's
    /// signature scheme over an empty body (Okta's static Authorization header).
    pub verify_token: Option<String>,
    /// Recognised before the signature stage, on the raw body (JSON, else form): deliveries the
    /// provider sends unsigned (WooCommerce's ping, Notion's verification token). On a GET or
    /// OPTIONS handshake: answered without any authentication (it must store nothing).
    #[serde(default)]
    pub unsigned: bool,
    /// How to answer.
    pub reply: ReplyDef,
}

/// How a handshake is answered.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ReplyDef {
    /// `200 {"status":"ok","handshake":"<name>"}`.
    Ack,
    /// Returns the value at `source` as JSON `{"<field>": value}` or as plain text.
    Echo {
        source: String,
        #[serde(default)]
        field: Option<String>,
        /// Overrides the answer's Content-Type (default: JSON with `field`, else text/plain).
        #[serde(default)]
        content_type: Option<String>,
    },
    /// Returns a fixed JSON body (Discord's PONG `{"type":1}`).
    Json { body: String },
    /// An empty 200 whose `header` is the value at `source` (CloudEvents' `WebHook-Allowed-Origin`
    /// echoing `WebHook-Request-Origin`).
    Header { source: String, header: String },
    /// Not answered as a handshake: the delivery is stored as an event by the format that
    /// matches it (Notion's one-time `verification_token`, which the operator must read).
    /// Only for `unsigned` handshakes.
    Store,
    /// Returns `{"<plain_field>": value, "<mac_field>": hex HMAC-SHA256(secret, value)}` for the
    /// value at `source` (Zoom's `endpoint.url_validation`).
    HmacEcho {
        source: String,
        plain_field: String,
        mac_field: String,
    },
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum HandshakeMethod {
    #[default]
    Post,
    Get,
    Options,
}

/// `when = { source = "header:X-GitHub-Event", equals = "ping" }`; without `equals` the source
/// only has to be present.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionDef {
    pub source: String,
    pub equals: Option<toml::Value>,
}

/// `[[event]]`: where the envelope's fields come from for one payload format.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventDef {
    /// Name of this format, recorded in `meta.format` when a kind has several.
    pub name: Option<String>,
    /// Which payloads this format handles; absent means all.
    pub when: Option<ConditionDef>,
    /// A pointer to an array whose elements are separate events (`""` for a top-level array).
    /// Inside a batch, pointers address the element and `root:` the whole body.
    pub batch: Option<String>,
    /// Sources of the provider's event ID, first present wins.
    #[serde(default)]
    pub id: Vec<String>,
    /// When no `id` source is present: hash these sources into a stable ID (default: the body).
    #[serde(default)]
    pub id_derive: Vec<String>,
    /// Inside a batch: sources that tell otherwise identical elements apart (Sockudo's
    /// per-event `time_ms`). When one is present it is hashed into the derived ID too; when
    /// none is, an element whose derived ID repeats an earlier one of the same batch gets its
    /// position hashed in, so `member_added`, `member_removed`, `member_added` stay three events.
    #[serde(default)]
    pub id_distinct: Vec<String>,
    /// Sources joined with `type_separator` into the provider's event type; absent parts skipped.
    #[serde(rename = "type")]
    pub type_parts: Vec<String>,
    #[serde(default = "default_separator")]
    pub type_separator: String,
    /// Explicit object source; otherwise the type is split.
    #[serde(default)]
    pub object: Vec<String>,
    /// Explicit action source; otherwise the type is split.
    #[serde(default)]
    pub action: Vec<String>,
    /// How `type` splits into object and action when they are not given.
    #[serde(default)]
    pub split: SplitDef,
    /// Action used when the payload has none (for example GitHub `push`).
    pub default_action: Option<String>,
    /// Provider verbs renamed before canonicalisation (`message_changed = "updated"`).
    #[serde(default)]
    pub actions: BTreeMap<String, String>,
    /// Map verbs onto created/updated/deleted; off for kinds whose events are not lifecycles.
    #[serde(default = "default_true")]
    pub canonicalise: bool,
    #[serde(default)]
    pub object_id: Vec<String>,
    #[serde(default)]
    pub current: Vec<String>,
    /// Per-object overrides of `current`, keyed by the object name.
    #[serde(default)]
    pub current_by_object: BTreeMap<String, String>,
    #[serde(default)]
    pub previous: Vec<String>,
    /// When `previous` finds nothing: build it from a change list shaped
    /// `{"field": {"<key>": old, ...}}` (GitLab's `changes`).
    pub previous_changes: Option<ChangesDef>,
    #[serde(default)]
    pub occurred_at: Vec<String>,
    /// Provider extras copied into `meta`: name → source (`"a | b"` alternatives), or
    /// `{ source, as, add, greater_than }` to give a field the same type across payload
    /// versions (see [`MetaRuleDef`]).
    #[serde(default)]
    pub meta: BTreeMap<String, MetaDef>,
}

/// One `meta` field: a source, or a source with a conversion.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MetaDef {
    Source(String),
    Rule(MetaRuleDef),
}

/// `user_id = { source = "/meta/user_id", as = "integer" }`,
/// `retry = { source = "/meta/attempt", add = -1 }` (a 1-based attempt as a 0-based retry),
/// `is_retry = { source = "/meta/attempt", greater_than = 1 }` (a boolean).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaRuleDef {
    pub source: String,
    /// `integer`, `string` or `boolean`: numbers written as strings become numbers, and so on.
    #[serde(rename = "as")]
    pub as_type: Option<MetaType>,
    /// Added to the (integer) value.
    pub add: Option<i64>,
    /// The field becomes `true` when the (integer) value is greater than this, else `false`.
    pub greater_than: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MetaType {
    Integer,
    String,
    Boolean,
}

fn default_separator() -> String {
    ".".to_owned()
}

fn default_true() -> bool {
    true
}

/// `previous_changes = { source = "/changes", key = "previous" }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesDef {
    pub source: String,
    pub key: String,
}

/// `split = { separator = ".", at = "last", order = "object-action" }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitDef {
    pub separator: String,
    pub at: SplitAt,
    pub order: SplitOrder,
    /// A namespace the provider puts before every type, left out of the object
    /// (`zen:event-type:ticket.status_changed` → `ticket`/`status_changed`); `type` keeps it.
    pub strip_prefix: String,
}

impl Default for SplitDef {
    fn default() -> Self {
        Self {
            separator: default_separator(),
            at: SplitAt::Last,
            order: SplitOrder::ObjectAction,
            strip_prefix: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SplitAt {
    First,
    Last,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SplitOrder {
    /// `customer.subscription.updated`
    ObjectAction,
    /// `updated.deal`
    ActionObject,
}
