//! Provider kinds and instances: definitions read from `providers/<kind>.toml`
//! ([`definition`]), compiled into ready kinds ([`kind`]) with their value [`source`]s, and
//! joined with each configured instance into the [`registry`].

pub mod definition;
pub mod kind;
pub mod registry;
pub mod source;
