//! The baseline for benchmarks: a bare actix-web POST handler that reads the body and checks
//! the same HMAC-SHA256 signature as hookgate's `generic` kind, and nothing else (no storage,
//! no parsing). `bench/run.sh` measures hookgate against it, so results read as ratios.
//!
//! ```sh
//! cargo run --release --example bare -- 127.0.0.1:18090
//! ```

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use hmac::{Hmac, Mac};

const SECRET: &str = "hookgate-demo-secret-do-not-use-in-production";

async fn receive(req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let Some(sent) = req
        .headers()
        .get("x-webhook-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|v| hex::decode(v).ok())
    else {
        return HttpResponse::Unauthorized().finish();
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key");
    mac.update(&body);
    match mac.verify_slice(&sent) {
        Ok(()) => HttpResponse::Ok()
            .content_type("application/json")
            .body(r#"{"status":"accepted"}"#),
        Err(_) => HttpResponse::Unauthorized().finish(),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18090".into());
    HttpServer::new(|| App::new().route("/webhooks/{name}", web::post().to(receive)))
        .bind(bind)?
        .run()
        .await
}
