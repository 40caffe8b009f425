//! The dashboard's stylesheet and script, written for it and compiled into the binary.

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use crate::error::GatewayError;

const CSS: &str = include_str!("assets/ui.css");
const JS: &str = include_str!("assets/ui.js");

/// `GET /ui/assets/{file}` (no session needed: nothing in them is private). 404 when the
/// dashboard is off, like every `/ui` route.
pub async fn serve(req: HttpRequest, ui: web::Data<super::UiState>) -> HttpResponse {
    if let Err(response) = super::enabled(&ui) {
        return response;
    }
    let (body, content_type) = match req.match_info().get("file").unwrap_or_default() {
        "ui.css" => (CSS, "text/css; charset=utf-8"),
        "ui.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return GatewayError::NotFound.error_response(),
    };
    HttpResponse::Ok().content_type(content_type).body(body)
}
