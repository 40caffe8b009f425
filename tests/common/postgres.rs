//! The PostgreSQL server the tests run against: `HOOKGATE_TEST_PG`, set by
//! `scripts/with-postgres.sh` (the README's test command), which starts a throw-away cluster.
#![allow(dead_code)]

use std::hash::{Hash, Hasher};

use sqlx::Connection as _;

/// The server's admin URL (a database every test may create databases from).
pub fn server_url() -> String {
    std::env::var("HOOKGATE_TEST_PG").unwrap_or_else(|_| {
        panic!(
            "HOOKGATE_TEST_PG is not set: the PostgreSQL tests need a server. Run the suite with \
             `scripts/with-postgres.sh cargo test` (it starts a throw-away cluster), or point \
             HOOKGATE_TEST_PG at a server where this role may create databases."
        )
    })
}

/// The URL of database `name` on the test server.
pub fn database_url(name: &str) -> String {
    let server = server_url();
    let (base, rest) = server.rsplit_once('/').expect("a URL with a database");
    let query = rest
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{base}/{name}{query}")
}

/// A database name derived from a path (each test directory gets its own database).
pub fn name_for(path: &std::path::Path) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut hasher);
    format!("hg_{:016x}", hasher.finish())
}

/// Creates database `name` unless it exists; returns its URL.
pub async fn ensure_database(name: &str) -> String {
    let mut admin = sqlx::PgConnection::connect(&server_url())
        .await
        .expect("connect to the test PostgreSQL server");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut admin)
            .await
            .expect("list databases");
    if !exists {
        // The name is ours (hg_ + hex or a test's literal): safe to splice.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create a test database");
    }
    let _ = admin.close().await;
    database_url(name)
}

/// A new, empty database with a unique name; returns its URL.
pub async fn fresh_database(prefix: &str) -> String {
    let name = format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase());
    ensure_database(&name).await
}
