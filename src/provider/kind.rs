//! A provider kind ready for the request path: a [`Definition`] compiled once at startup.
//!
//! Compiling parses every source, template, header name and condition, so nothing on the
//! request path can fail for a reason the operator could have been told at startup. Errors name
//! the definition file and the key.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use actix_web::http::header::{HeaderName, AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};

use super::definition::{
    BodyFormat, ConditionDef, Definition, EventDef, HandshakeMethod, MetaDef, MetaType, ReplyDef,
    SplitAt, SplitOrder,
};
use super::source::{Condition, Source, Sources};
use crate::config::ConfigError;
use crate::pipeline::signature::Scheme;

/// A compiled provider definition.
#[derive(Debug)]
pub struct Kind {
    pub name: String,
    pub description: String,
    pub body: BodyFormat,
    pub scheme: Scheme,
    pub handshakes: Vec<Handshake>,
    pub formats: Vec<EventRule>,
    /// Headers that carry credentials: never stored with the raw delivery.
    pub secret_headers: Vec<HeaderName>,
    /// The answer to stored and duplicate events when the provider wants its own body.
    pub accepted_reply: Option<AcceptedReply>,
}

/// A fixed answer body and its content type.
#[derive(Debug)]
pub struct AcceptedReply {
    pub body: serde_json::Value,
    pub content_type: String,
}

#[derive(Debug)]
pub struct Handshake {
    pub name: String,
    pub when: Condition,
    pub method: HandshakeMethod,
    /// GET handshakes: where the provider's copy of the instance's `verify_token` is.
    pub verify_token: Option<Source>,
    /// Recognised before the signature is checked (see `HandshakeDef::unsigned`).
    pub unsigned: bool,
    pub reply: Reply,
}

#[derive(Debug)]
pub enum Reply {
    Ack,
    Echo {
        source: Source,
        field: Option<String>,
        content_type: Option<String>,
    },
    Json(serde_json::Value),
    /// An empty answer with one header from `source`.
    Header {
        source: Source,
        header: HeaderName,
    },
    /// Stored as an event, answered as one.
    Store,
    HmacEcho {
        source: Source,
        plain_field: String,
        mac_field: String,
    },
}

/// How one payload format becomes an envelope.
#[derive(Debug)]
pub struct EventRule {
    pub name: Option<String>,
    pub when: Option<Condition>,
    pub batch: Option<String>,
    pub id: Sources,
    pub id_derive: Sources,
    /// Batch elements: what tells identical ones apart (see `EventDef::id_distinct`).
    pub id_distinct: Sources,
    /// Each part is a list of alternatives (`a | b`): the first present one is used.
    pub type_parts: Vec<Sources>,
    pub type_separator: String,
    pub object: Sources,
    pub action: Sources,
    pub split: Split,
    pub default_action: Option<String>,
    pub actions: HashMap<String, String>,
    pub canonicalise: bool,
    pub object_id: Sources,
    pub current: Sources,
    pub current_by_object: HashMap<String, Source>,
    pub previous: Sources,
    pub previous_changes: Option<ChangesRule>,
    pub occurred_at: Sources,
    pub meta: Vec<(String, MetaRule)>,
}

/// A compiled `meta` field.
#[derive(Debug)]
pub struct MetaRule {
    pub sources: Sources,
    pub as_type: Option<MetaType>,
    pub add: Option<i64>,
    pub greater_than: Option<i64>,
}

impl MetaRule {
    /// The field's value from what the source found; `None` leaves the field out (a value
    /// that cannot be converted is left out rather than sent with another type).
    pub fn apply(&self, value: serde_json::Value) -> Option<serde_json::Value> {
        use serde_json::Value;
        let integer = |v: &Value| match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        };
        if self.add.is_some() || self.greater_than.is_some() {
            let n = integer(&value)?.saturating_add(self.add.unwrap_or(0));
            return Some(match self.greater_than {
                Some(limit) => Value::Bool(n > limit),
                None => Value::from(n),
            });
        }
        match self.as_type {
            None => Some(value),
            Some(MetaType::Integer) => integer(&value).map(Value::from),
            Some(MetaType::String) => super::source::text_of(&value).map(Value::String),
            Some(MetaType::Boolean) => match &value {
                Value::Bool(b) => Some(Value::Bool(*b)),
                Value::String(s) if s == "true" || s == "1" => Some(Value::Bool(true)),
                Value::String(s) if s == "false" || s == "0" => Some(Value::Bool(false)),
                Value::Number(n) => n.as_i64().map(|n| Value::Bool(n != 0)),
                _ => None,
            },
        }
    }
}

/// Where a change list is and which key holds the old value.
#[derive(Debug)]
pub struct ChangesRule {
    pub source: Source,
    pub key: String,
}

#[derive(Debug, Clone)]
pub struct Split {
    pub separator: String,
    pub at: SplitAt,
    pub order: SplitOrder,
    /// Removed from the front of the type before it is split (when present).
    pub strip_prefix: String,
}

impl Split {
    /// `customer.subscription.updated` → (`customer.subscription`, `updated`).
    pub fn apply<'t>(&self, event_type: &'t str) -> Option<(&'t str, &'t str)> {
        let event_type = event_type
            .strip_prefix(self.strip_prefix.as_str())
            .unwrap_or(event_type);
        let (left, right) = match self.at {
            SplitAt::First => event_type.split_once(self.separator.as_str())?,
            SplitAt::Last => event_type.rsplit_once(self.separator.as_str())?,
        };
        let (object, action) = match self.order {
            SplitOrder::ObjectAction => (left, right),
            SplitOrder::ActionObject => (right, left),
        };
        (!object.is_empty() && !action.is_empty()).then_some((object, action))
    }
}

/// Loads and compiles every `*.toml` in `dir`, keyed by file stem.
pub fn load_dir(dir: &Path) -> Result<HashMap<String, Arc<Kind>>, ConfigError> {
    let dir_name = dir.display().to_string();
    let entries = std::fs::read_dir(dir).map_err(|e| {
        ConfigError::new(
            &dir_name,
            None,
            format!("cannot read provider definitions: {e}"),
        )
    })?;
    let mut kinds = HashMap::new();
    for entry in entries {
        let path = entry
            .map_err(|e| ConfigError::new(&dir_name, None, e.to_string()))?
            .path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let kind = load_file(&path, name)?;
        kinds.insert(name.to_owned(), Arc::new(kind));
    }
    Ok(kinds)
}

/// Loads and compiles one definition file.
pub fn load_file(path: &Path, name: &str) -> Result<Kind, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&file, None, format!("cannot read: {e}")))?;
    let definition: Definition = serde_path_to_error::deserialize(toml::Deserializer::new(&text))
        .map_err(|e| {
        let key = e.path().to_string();
        ConfigError::new(
            &file,
            (key != ".").then_some(key),
            e.into_inner().message().to_owned(),
        )
    })?;
    compile(name, definition).map_err(|(key, message)| ConfigError::new(&file, Some(key), message))
}

type CompileError = (String, String);

/// Compiles a definition; errors are `(key, message)`.
pub fn compile(name: &str, def: Definition) -> Result<Kind, CompileError> {
    let scheme = Scheme::compile(&def.signature)?;
    let handshakes = def
        .handshake
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let key = |field: &str| format!("handshake[{i}].{field}");
            if h.unsigned && h.verify_token.is_some() {
                return Err((
                    key("unsigned"),
                    "a handshake with a verify_token is authenticated by it; drop `unsigned`"
                        .into(),
                ));
            }
            if h.unsigned && h.method != HandshakeMethod::Post && matches!(h.reply, ReplyDef::Store)
            {
                return Err((key("reply"), "only POST bodies can be stored".into()));
            }
            if h.verify_token.is_some() && h.method != HandshakeMethod::Get {
                return Err((
                    key("verify_token"),
                    "only GET handshakes take a verify_token".into(),
                ));
            }
            if matches!(h.reply, ReplyDef::Store) && !h.unsigned {
                return Err((
                    key("reply"),
                    "`store` is for unsigned handshakes; signed deliveries are stored anyway"
                        .into(),
                ));
            }
            if matches!(h.reply, ReplyDef::HmacEcho { .. }) && h.unsigned {
                return Err((key("reply"), "`hmac-echo` needs a verified delivery".into()));
            }
            Ok(Handshake {
                name: h.name.clone(),
                when: condition(&h.when).map_err(|m| (key("when"), m))?,
                method: h.method,
                verify_token: h
                    .verify_token
                    .as_deref()
                    .map(Source::parse)
                    .transpose()
                    .map_err(|m| (key("verify_token"), m))?,
                unsigned: h.unsigned,
                reply: match &h.reply {
                    ReplyDef::Ack => Reply::Ack,
                    ReplyDef::Store => Reply::Store,
                    ReplyDef::Header { source, header } => Reply::Header {
                        source: Source::parse(source).map_err(|m| (key("reply.source"), m))?,
                        header: HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                            (
                                key("reply.header"),
                                format!("`{header}` is not a header name"),
                            )
                        })?,
                    },
                    ReplyDef::Echo {
                        source,
                        field,
                        content_type,
                    } => Reply::Echo {
                        source: Source::parse(source).map_err(|m| (key("reply.source"), m))?,
                        field: field.clone(),
                        content_type: content_type.clone(),
                    },
                    ReplyDef::Json { body } => Reply::Json(
                        serde_json::from_str(body)
                            .map_err(|e| (key("reply.body"), format!("not JSON: {e}")))?,
                    ),
                    ReplyDef::HmacEcho {
                        source,
                        plain_field,
                        mac_field,
                    } => Reply::HmacEcho {
                        source: Source::parse(source).map_err(|m| (key("reply.source"), m))?,
                        plain_field: plain_field.clone(),
                        mac_field: mac_field.clone(),
                    },
                },
            })
        })
        .collect::<Result<Vec<_>, CompileError>>()?;
    if def.event.is_empty() {
        return Err((
            "event".into(),
            "at least one [[event]] format is required".into(),
        ));
    }
    let formats = def
        .event
        .iter()
        .enumerate()
        .map(|(i, e)| compile_event(i, e))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, h) in handshakes.iter().enumerate() {
        let named = formats
            .iter()
            .any(|f| f.name.as_deref() == Some(h.name.as_str()));
        if matches!(h.reply, Reply::Store) && !named {
            return Err((
                format!("handshake[{i}].reply"),
                format!("an unsigned `store` handshake is stored by the [[event]] format of the same name; add one named `{}`", h.name),
            ));
        }
    }
    let mut secret_headers = vec![AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE];
    secret_headers.extend(scheme.secret_headers());
    let accepted_reply = def
        .accepted_reply
        .map(|r| {
            Ok::<_, CompileError>(AcceptedReply {
                body: serde_json::from_str(&r.body)
                    .map_err(|e| ("accepted_reply.body".to_owned(), format!("not JSON: {e}")))?,
                content_type: r.content_type,
            })
        })
        .transpose()?;
    Ok(Kind {
        name: name.to_owned(),
        description: def.description,
        body: def.body,
        scheme,
        handshakes,
        formats,
        secret_headers,
        accepted_reply,
    })
}

/// `"a | b"`: sources tried in order.
fn alternatives(text: &str) -> Result<Sources, String> {
    let parts: Vec<String> = text.split(" | ").map(|a| a.trim().to_owned()).collect();
    Sources::parse(&parts).map_err(|(_, m)| m)
}

fn condition(def: &ConditionDef) -> Result<Condition, String> {
    let equals = def
        .equals
        .clone()
        .map(|v| serde_json::to_value(v).map_err(|e| e.to_string()))
        .transpose()?;
    Ok(Condition {
        source: Source::parse(&def.source)?,
        equals,
    })
}

fn compile_event(i: usize, e: &EventDef) -> Result<EventRule, CompileError> {
    let key = |field: &str| format!("event[{i}].{field}");
    let list = |field: &str, texts: &[String]| {
        Sources::parse(texts).map_err(|(j, m)| (format!("event[{i}].{field}[{j}]"), m))
    };
    if e.type_parts.is_empty() {
        return Err((key("type"), "at least one source is required".into()));
    }
    let object = list("object", &e.object)?;
    let action = list("action", &e.action)?;
    if object.is_empty() && !action.is_empty() {
        return Err((
            key("action"),
            "`action` needs `object` (without either, `type` is split; with `object` alone, the action is the split type's)".into(),
        ));
    }
    if e.split.separator.is_empty() {
        return Err((key("split.separator"), "must not be empty".into()));
    }
    let current_by_object = e
        .current_by_object
        .iter()
        .map(|(object, text)| {
            Source::parse(text)
                .map(|s| (object.clone(), s))
                .map_err(|m| (key(&format!("current_by_object.{object}")), m))
        })
        .collect::<Result<_, _>>()?;
    let meta = e
        .meta
        .iter()
        .map(|(name, def)| {
            let rule = match def {
                MetaDef::Source(text) => alternatives(text).map(|sources| MetaRule {
                    sources,
                    as_type: None,
                    add: None,
                    greater_than: None,
                }),
                MetaDef::Rule(rule) => alternatives(&rule.source).map(|sources| MetaRule {
                    sources,
                    as_type: rule.as_type,
                    add: rule.add,
                    greater_than: rule.greater_than,
                }),
            };
            rule.map(|r| (name.clone(), r))
                .map_err(|m| (key(&format!("meta.{name}")), m))
        })
        .collect::<Result<_, _>>()?;
    if let Some(batch) = &e.batch {
        if !(batch.is_empty() || batch.starts_with('/')) {
            return Err((key("batch"), format!("`{batch}` is not a JSON pointer")));
        }
    }
    Ok(EventRule {
        name: e.name.clone(),
        batch: e.batch.clone(),
        when: e
            .when
            .as_ref()
            .map(condition)
            .transpose()
            .map_err(|m| (key("when"), m))?,
        id: list("id", &e.id)?,
        id_derive: list("id_derive", &e.id_derive)?,
        id_distinct: list("id_distinct", &e.id_distinct)?,
        type_parts: e
            .type_parts
            .iter()
            .enumerate()
            .map(|(j, part)| alternatives(part).map_err(|m| (format!("event[{i}].type[{j}]"), m)))
            .collect::<Result<_, _>>()?,
        type_separator: e.type_separator.clone(),
        object,
        action,
        split: Split {
            separator: e.split.separator.clone(),
            at: e.split.at,
            order: e.split.order,
            strip_prefix: e.split.strip_prefix.clone(),
        },
        default_action: e.default_action.clone(),
        actions: e.actions.clone().into_iter().collect(),
        canonicalise: e.canonicalise,
        object_id: list("object_id", &e.object_id)?,
        current: list("current", &e.current)?,
        current_by_object,
        previous: list("previous", &e.previous)?,
        previous_changes: e
            .previous_changes
            .as_ref()
            .map(|c| {
                Source::parse(&c.source)
                    .map(|source| ChangesRule {
                        source,
                        key: c.key.clone(),
                    })
                    .map_err(|m| (key("previous_changes.source"), m))
            })
            .transpose()?,
        occurred_at: list("occurred_at", &e.occurred_at)?,
        meta,
    })
}

impl Kind {
    /// The first signed POST handshake whose condition holds.
    pub fn handshake(&self, ctx: &super::source::Context<'_>) -> Option<&Handshake> {
        self.handshakes
            .iter()
            .find(|h| h.method == HandshakeMethod::Post && !h.unsigned && h.when.holds(ctx))
    }

    /// The first unsigned POST handshake whose condition holds on the raw body.
    pub fn unsigned_handshake(&self, ctx: &super::source::Context<'_>) -> Option<&Handshake> {
        self.handshakes
            .iter()
            .find(|h| h.method == HandshakeMethod::Post && h.unsigned && h.when.holds(ctx))
    }

    /// Whether unsigned POST handshakes are looked for before the signature stage.
    pub fn has_unsigned_handshakes(&self) -> bool {
        self.handshakes
            .iter()
            .any(|h| h.method == HandshakeMethod::Post && h.unsigned)
    }

    /// Whether requests with this method (GET, OPTIONS) can be handshakes for this kind.
    pub fn has_handshakes_for(&self, method: HandshakeMethod) -> bool {
        self.handshakes.iter().any(|h| h.method == method)
    }

    /// The first bodiless (GET, OPTIONS) handshake of `method` whose condition holds.
    pub fn bodiless_handshake(
        &self,
        method: HandshakeMethod,
        ctx: &super::source::Context<'_>,
    ) -> Option<&Handshake> {
        self.handshakes
            .iter()
            .find(|h| h.method == method && h.when.holds(ctx))
    }

    /// Whether the provider delivers the signing secret itself, unsigned (a `store` handshake).
    pub fn delivers_its_secret(&self) -> bool {
        self.handshakes
            .iter()
            .any(|h| h.unsigned && matches!(h.reply, Reply::Store))
    }

    /// Whether instances must configure `verify_token`.
    pub fn needs_verify_token(&self) -> bool {
        self.handshakes.iter().any(|h| h.verify_token.is_some())
    }

    /// The first payload format whose condition holds.
    pub fn format(&self, ctx: &super::source::Context<'_>) -> Option<&EventRule> {
        self.formats
            .iter()
            .find(|f| f.when.as_ref().is_none_or(|w| w.holds(ctx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_takes_object_and_action_from_the_type() {
        let last = Split {
            separator: ".".into(),
            at: SplitAt::Last,
            order: SplitOrder::ObjectAction,
            strip_prefix: String::new(),
        };
        assert_eq!(
            last.apply("customer.subscription.updated"),
            Some(("customer.subscription", "updated"))
        );
        let first = Split {
            separator: ".".into(),
            at: SplitAt::First,
            order: SplitOrder::ActionObject,
            strip_prefix: String::new(),
        };
        assert_eq!(first.apply("updated.deal"), Some(("deal", "updated")));
        assert_eq!(last.apply("nodot"), None);
        assert_eq!(last.apply("trailing."), None);
        let namespaced = Split {
            strip_prefix: "zen:event-type:".into(),
            ..last.clone()
        };
        assert_eq!(
            namespaced.apply("zen:event-type:ticket.status_changed"),
            Some(("ticket", "status_changed"))
        );
        assert_eq!(namespaced.apply("user.created"), Some(("user", "created")));
    }

    #[test]
    fn every_committed_provider_definition_compiles() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("providers");
        let kinds = load_dir(&dir).unwrap();
        for name in [
            "generic",
            "github",
            "pipedrive",
            "stripe",
            "shopify",
            "slack",
            "standard-webhooks",
            "pusher",
            "gitlab",
            "linear",
            "paddle",
            "twilio",
            "zoom",
            "twitch",
            "square",
            "mailgun",
            "discord",
            "sendgrid",
            "hubspot",
            "meta",
            "intercom",
            "vercel",
            "workos",
            "telnyx",
            "azure-eventgrid",
            "okta",
            "woocommerce",
            "notion",
        ] {
            assert!(kinds.contains_key(name), "{name} missing");
        }
        // Every kind with fixtures has a definition (and so every new kind is compiled here).
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        for entry in std::fs::read_dir(fixtures).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(
                kinds.contains_key(&name),
                "fixtures/{name} has no definition"
            );
        }
    }

    #[test]
    fn handshake_keys_that_cannot_work_are_refused_at_compile_time() {
        let compile_text = |handshake: &str| {
            let text = format!(
                "[signature]\nscheme = \"token\"\nheader = \"X-T\"\n[[handshake]]\nname = \"h\"\nwhen = {{ source = \"header:X-H\" }}\n{handshake}\n[[event]]\ntype = [\"/type\"]\n"
            );
            compile("x", toml::from_str(&text).unwrap()).map(|_| ())
        };
        let refused = |handshake: &str, key: &str| {
            let (k, _) = compile_text(handshake).unwrap_err();
            assert_eq!(k, key, "{handshake}");
        };
        refused("reply = { kind = \"store\" }", "handshake[0].reply");
        refused(
            "unsigned = true\nreply = { kind = \"store\" }",
            "handshake[0].reply",
        );
        refused(
            "verify_token = \"query:t\"\nreply = { kind = \"ack\" }",
            "handshake[0].verify_token",
        );
        refused(
            "method = \"GET\"\nunsigned = true\nverify_token = \"query:t\"\nreply = { kind = \"ack\" }",
            "handshake[0].unsigned",
        );
        assert!(compile_text(
            "method = \"GET\"\nverify_token = \"query:t\"\nreply = { kind = \"ack\" }"
        )
        .is_ok());
    }

    #[test]
    fn compile_errors_name_the_key() {
        let def: Definition = toml::from_str(
            r#"
            [signature]
            scheme = "basic"
            [[event]]
            type = ["data/type"]
            "#,
        )
        .unwrap();
        let (key, message) = compile("x", def).unwrap_err();
        assert_eq!(key, "event[0].type[0]");
        assert!(message.contains("JSON pointer"), "{message}");
    }
}
