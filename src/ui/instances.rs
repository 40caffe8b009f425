//! `/ui/instances`: provider instances and sinks with their health, and pause/resume.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, Nav};
use super::view::badge;
use super::{html as page_html, Ctx, UiState};
use crate::routes::AppState;
use crate::store::PauseTarget;

#[derive(Debug, Default, Deserialize)]
struct Done {
    paused: Option<String>,
    resumed: Option<String>,
}

fn pause_form(ctx: &Ctx, target: PauseTarget, name: &str, paused: bool) -> Markup {
    let (action, label) = if paused {
        ("resume", "Resume")
    } else {
        ("pause", "Pause")
    };
    let confirm = if paused {
        None
    } else {
        Some(match target {
            PauseTarget::Instance => format!(
                "Pause {name}? Its deliveries will be answered 503 `paused` until it is resumed."
            ),
            PauseTarget::Sink => {
                format!("Pause sink {name}? Its deliveries stay pending until it is resumed.")
            }
        })
    };
    html! {
        form.inline method="post" action={ "/ui/" (target.as_str()) "s/" (name) "/" (action) } {
            (layout::csrf_field(ctx))
            button type="submit" class=[(!paused).then_some("danger")]
                data-confirm=[confirm] id={ (action) "-" (target.as_str()) "-" (name) } { (label) }
        }
    }
}

/// `GET /ui/instances`.
pub async fn page(
    req: HttpRequest,
    state: web::Data<AppState>,
    ui: web::Data<UiState>,
) -> HttpResponse {
    let ctx = match super::page_guard(&req, &state, &ui) {
        Ok(ctx) => ctx,
        Err(response) => return response,
    };
    let paused = match state.store.paused().await {
        Ok(list) => list,
        Err(e) => return super::admin_error(&ctx, e.into()),
    };
    let is_paused = |target: PauseTarget, name: &str| {
        paused.iter().any(|p| p.target == target && p.name == name)
    };
    let done = web::Query::<Done>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let instances = crate::routes::admin::instance_names(&state);
    let sinks = crate::routes::admin::sink_names(&state);
    let body = html! {
        @if let Some(name) = &done.paused { (layout::notice(&format!("Paused {name}."))) }
        @if let Some(name) = &done.resumed { (layout::notice(&format!("Resumed {name}."))) }
        h2 { "Provider instances" }
        table #instances {
            thead { tr { th { "Instance" } th { "Kind" } th { "State" } th {} } }
            tbody {
                @for name in &instances {
                    @let kind = state.registry.get(name).map(|i| i.kind.name.clone()).unwrap_or_default();
                    @let p = is_paused(PauseTarget::Instance, name);
                    tr data-instance=(name) {
                        td { strong { (name) } div.muted.mono { "/webhooks/" (name) } }
                        td { (kind) }
                        td { (badge(if p { "paused" } else { "running" })) }
                        td { (pause_form(&ctx, PauseTarget::Instance, name, p)) }
                    }
                }
            }
        }
        h2 { "Sinks" }
        table #sinks {
            thead { tr { th { "Sink" } th { "State" } th {} } }
            tbody {
                @for name in &sinks {
                    @let p = is_paused(PauseTarget::Sink, name);
                    tr data-sink=(name) {
                        td { strong { (name) } }
                        td { (badge(if p { "paused" } else { "running" })) }
                        td { (pause_form(&ctx, PauseTarget::Sink, name, p)) }
                    }
                }
            }
        }
    };
    page_html(
        StatusCode::OK,
        layout::page(&ctx, Nav::Instances, "Instances & sinks", body),
    )
}

/// `POST /ui/{instances|sinks}/{name}/{pause|resume}`.
pub async fn set_paused(
    req: HttpRequest,
    state: web::Data<AppState>,
    ui: web::Data<UiState>,
    body: web::Bytes,
) -> HttpResponse {
    let (ctx, _) = match super::post_guard(&req, &state, &ui, &body) {
        Ok(ok) => ok,
        Err(response) => return response,
    };
    let info = req.match_info();
    let name = info.get("name").unwrap_or_default().to_owned();
    let target = match info.get("target") {
        Some("instances") if state.registry.get(&name).is_some() => PauseTarget::Instance,
        Some("sinks") if state.dispatcher.route(&name).is_some() => PauseTarget::Sink,
        _ => {
            return super::error_page(
                &ctx,
                StatusCode::NOT_FOUND,
                "Nothing with this name is configured.",
            )
        }
    };
    let paused = match info.get("action") {
        Some("pause") => true,
        Some("resume") => false,
        _ => return super::error_page(&ctx, StatusCode::NOT_FOUND, "No such action."),
    };
    match crate::routes::admin::apply_pause(&state, target, &name, paused).await {
        Ok(_) => super::redirect(&format!(
            "/ui/instances?{}",
            serde_urlencoded::to_string([(if paused { "paused" } else { "resumed" }, &name)])
                .unwrap_or_default()
        )),
        Err(e) => super::admin_error(&ctx, e),
    }
}
