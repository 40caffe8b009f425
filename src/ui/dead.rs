//! `/ui/dead-letters`: deliveries that gave up, by sink; redeliver one, or all that match
//! after a dry-run count.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, Nav};
use super::view;
use super::{html as page_html, Ctx, Posted, SignedIn};
use crate::admin;
use crate::routes::AppState;

/// Dead letters listed per page, and the most a dry run counts.
const SHOWN: usize = 200;
const COUNT_CAP: usize = admin::MAX_LIMIT;

#[derive(Debug, Default, Deserialize)]
struct SinkFilter {
    sink: Option<String>,
    redelivered: Option<usize>,
}

fn sink_filter(req: &HttpRequest) -> SinkFilter {
    web::Query::<SinkFilter>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default()
}

/// The configured sink named `sink` (`Ok(None)` for all sinks), or the 404 page.
fn known_sink(
    ctx: &Ctx,
    state: &AppState,
    sink: Option<&str>,
) -> Result<Option<String>, HttpResponse> {
    match sink.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(name) if state.dispatcher.route(name).is_some() => Ok(Some(name.to_owned())),
        Some(_) => Err(super::error_page(
            ctx,
            StatusCode::NOT_FOUND,
            "No sink with this name is configured.",
        )),
    }
}

/// The `?sink=` of a GET: a configured sink, or all (`None`).
fn requested_sink(
    req: &HttpRequest,
    ctx: &Ctx,
    state: &AppState,
) -> Result<Option<String>, HttpResponse> {
    known_sink(ctx, state, sink_filter(req).sink.as_deref())
}

fn sink_select(state: &AppState, chosen: Option<&str>) -> Markup {
    let sinks = crate::routes::admin::sink_names(state);
    html! {
        select name="sink" {
            option value="" { "all sinks" }
            @for name in &sinks {
                option value=(name) selected[Some(name.as_str()) == chosen] { (name) }
            }
        }
    }
}

/// `GET /ui/dead-letters?sink=`: the oldest dead letters first.
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    SignedIn(ctx): SignedIn,
) -> HttpResponse {
    let redelivered = sink_filter(&req).redelivered;
    let sink = match requested_sink(&req, &ctx, &state) {
        Ok(sink) => sink,
        Err(response) => return response,
    };
    let tasks = match state.store.dead_letters(sink.clone(), SHOWN + 1).await {
        Ok(tasks) => tasks,
        Err(e) => return super::admin_error(&ctx, e.into()),
    };
    let more = tasks.len() > SHOWN;
    let now = state.clock.now().timestamp_millis();
    let confirm = match &sink {
        Some(s) => format!(
            "/ui/dead-letters/redeliver?{}",
            serde_urlencoded::to_string([("sink", s)]).unwrap_or_default()
        ),
        None => "/ui/dead-letters/redeliver".to_owned(),
    };
    let body = html! {
        @if let Some(n) = redelivered {
            (layout::notice(&format!("{n} dead letter(s) are pending again.")))
        }
        form.filters method="get" action="/ui/dead-letters" {
            label { "Sink" (sink_select(&state, sink.as_deref())) }
            button type="submit" { "Filter" }
            @if !tasks.is_empty() {
                a.button #bulk href=(confirm) { "Redeliver all of these…" }
            }
        }
        table #dead-letters {
            thead { tr {
                th { "Event" } th { "Sink" } th.num { "Attempts" } th { "Created (UTC)" }
                th { "Last error" } th {}
            } }
            tbody {
                @if tasks.is_empty() { tr { td colspan="6" .muted { "No dead letters." } } }
                @for task in tasks.iter().take(SHOWN) {
                    tr data-envelope=(task.envelope_id) data-sink=(task.sink) {
                        td.mono { a href={ "/ui/events/" (task.envelope_id) } { (task.envelope_id) } }
                        td { (task.sink) }
                        td.num { (task.attempts) }
                        td { (view::time_ms(task.created_at_ms)) div.muted { (view::age(now - task.created_at_ms)) " ago" } }
                        td { (task.last_error.as_deref().unwrap_or("")) }
                        td {
                            form.inline method="post" action="/ui/dead-letters/redeliver-one" {
                                (layout::csrf_field(&ctx))
                                input type="hidden" name="envelope_id" value=(task.envelope_id);
                                input type="hidden" name="sink" value=(task.sink);
                                @if let Some(s) = &sink { input type="hidden" name="back" value=(s); }
                                button type="submit" { "Redeliver" }
                            }
                        }
                    }
                }
            }
        }
        @if more { p.muted { "The oldest " (SHOWN) " are shown; redeliver them (or filter by sink) to see the next." } }
    };
    page_html(
        StatusCode::OK,
        layout::page(&ctx, Nav::DeadLetters, "Dead letters", body),
    )
}

fn back_to(sink: Option<&str>, count: usize) -> HttpResponse {
    let mut pairs = vec![("redelivered", count.to_string())];
    if let Some(s) = sink {
        pairs.insert(0, ("sink", s.to_owned()));
    }
    super::redirect(&format!(
        "/ui/dead-letters?{}",
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    ))
}

/// `POST /ui/dead-letters/redeliver-one` (`envelope_id`, `sink`).
pub async fn redeliver_one(
    state: web::Data<AppState>,
    Posted { ctx, fields }: Posted,
) -> HttpResponse {
    let (Some(envelope_id), Some(sink)) = (
        super::field(&fields, "envelope_id"),
        super::field(&fields, "sink"),
    ) else {
        return super::error_page(&ctx, StatusCode::BAD_REQUEST, "Which dead letter?");
    };
    if let Err(response) = known_sink(&ctx, &state, Some(sink)) {
        return response;
    }
    let now = state.clock.now().timestamp_millis();
    match state
        .store
        .redeliver(envelope_id.to_owned(), Some(sink.to_owned()), now)
        .await
    {
        Ok(count) => back_to(super::field(&fields, "back"), count),
        Err(e) => super::admin_error(&ctx, e.into()),
    }
}

/// `GET /ui/dead-letters/redeliver?sink=`: the dry run: how many would be redelivered, and
/// the button that does it.
pub async fn confirm(
    req: HttpRequest,
    state: web::Data<AppState>,
    SignedIn(ctx): SignedIn,
) -> HttpResponse {
    let sink = match requested_sink(&req, &ctx, &state) {
        Ok(sink) => sink,
        Err(response) => return response,
    };
    let count = match state.store.dead_letters(sink.clone(), COUNT_CAP).await {
        Ok(tasks) => tasks.len(),
        Err(e) => return super::admin_error(&ctx, e.into()),
    };
    let what = match &sink {
        Some(s) => format!("of sink {s}"),
        None => "of all sinks".to_owned(),
    };
    let counted = if count >= COUNT_CAP {
        format!("At least {count} dead letters {what} match")
    } else {
        format!("{count} dead letter(s) {what} match")
    };
    let body = html! {
        div.card {
            p #dry-run { (counted) ". Redelivering makes each pending again with a fresh retry budget." }
            @if count > 0 {
                form method="post" action="/ui/dead-letters/redeliver" {
                    (layout::csrf_field(&ctx))
                    @if let Some(s) = &sink { input type="hidden" name="sink" value=(s); }
                    div.actions {
                        button.primary #confirm type="submit" { "Redeliver " (count) @if count >= COUNT_CAP { "+" } " now" }
                        a href="/ui/dead-letters" { "cancel" }
                    }
                }
            } @else {
                a href="/ui/dead-letters" { "back" }
            }
        }
    };
    page_html(
        StatusCode::OK,
        layout::page(&ctx, Nav::DeadLetters, "Redeliver dead letters", body),
    )
}

/// `POST /ui/dead-letters/redeliver` (`sink` optional): every matching dead letter.
pub async fn redeliver_all(
    state: web::Data<AppState>,
    Posted { ctx, fields }: Posted,
) -> HttpResponse {
    let sink = match known_sink(&ctx, &state, super::field(&fields, "sink")) {
        Ok(sink) => sink,
        Err(response) => return response,
    };
    let now = state.clock.now().timestamp_millis();
    match admin::redeliver_dead_letters(&*state.store, sink.as_deref(), now).await {
        Ok(count) => back_to(sink.as_deref(), count),
        Err(e) => super::admin_error(&ctx, e),
    }
}
