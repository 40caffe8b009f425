//! `/ui/instances`: provider instances and sinks with their health, and pause/resume.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};
use serde::Deserialize;

use super::chart;
use super::layout::{self, Nav};
use super::view::{self, badge};
use super::{html as page_html, Ctx, Posted, SignedIn};
use crate::observe::{InstanceStats, SinkStats};
use crate::routes::AppState;
use crate::store::{Backlog, PauseTarget};

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

fn skew(secs: Option<i64>) -> Markup {
    match secs {
        Some(s) => {
            let sign = if s < 0 { "−" } else { "+" };
            html! {
                span title={ (s) " s: receive time minus the signed timestamp" } {
                    (sign) (view::age(s.saturating_abs().saturating_mul(1000)))
                }
            }
        }
        None => html! { span.muted { "—" } },
    }
}

fn percent(rate: Option<f64>) -> Markup {
    match rate {
        Some(r) => {
            let class = if r >= 0.99 {
                "ok"
            } else if r >= 0.9 {
                "pending"
            } else {
                "bad"
            };
            html! { span class={ "badge " (class) } { (format!("{:.1} %", r * 100.0)) } }
        }
        None => html! { span.muted { "no attempts" } },
    }
}

fn instance_rows(
    ctx: &Ctx,
    state: &AppState,
    stats: &[InstanceStats],
    last: &[Option<String>],
    is_paused: &dyn Fn(PauseTarget, &str) -> bool,
) -> Markup {
    html! {
        @for (s, last) in stats.iter().zip(last) {
            @let kind = state.registry.get(&s.name).map(|i| i.kind.name.clone()).unwrap_or_default();
            @let p = is_paused(PauseTarget::Instance, &s.name);
            tr data-instance=(s.name) {
                td { strong { (s.name) } div.muted.mono { "/webhooks/" (s.name) } div.muted { (kind) } }
                td { (badge(if p { "paused" } else { "running" })) }
                td.num { (s.accepted) }
                td.num { (s.duplicates) }
                td {
                    div.num { (s.rejected) }
                    ul.codes {
                        @for (code, n) in s.rejected_by_code.iter().take(5) {
                            li { a href={ "/ui/rejected?" (query(&[("instance", &s.name), ("code", code)])) } { (code) } " " (n) }
                        }
                    }
                }
                td.num.nowrap { @match s.p99_ms { Some(p) => { (format!("{p:.1} ms")) }, None => { span.muted { "—" } } } }
                td { @match last { Some(t) => { (view::time(t)) }, None => { span.muted { "none" } } } }
                td.nowrap { span.muted { "last " } (skew(s.last_skew_secs)) br; span.muted { "max " } (skew(s.max_abs_skew_secs)) }
                td {
                    (chart::bars("requests per minute", &[
                        chart::Series { class: "a", label: "accepted", values: s.minutes.iter().map(|m| m.accepted).collect() },
                        chart::Series { class: "d", label: "duplicate", values: s.minutes.iter().map(|m| m.duplicates).collect() },
                        chart::Series { class: "r", label: "rejected", values: s.minutes.iter().map(|m| m.rejected).collect() },
                    ]))
                }
                td { (pause_form(ctx, PauseTarget::Instance, &s.name, p)) }
            }
        }
    }
}

fn sink_rows(
    ctx: &Ctx,
    stats: &[SinkStats],
    backlogs: &[Backlog],
    now: i64,
    is_paused: &dyn Fn(PauseTarget, &str) -> bool,
) -> Markup {
    html! {
        @for (s, backlog) in stats.iter().zip(backlogs) {
            @let p = is_paused(PauseTarget::Sink, &s.name);
            tr data-sink=(s.name) {
                td { strong { (s.name) } }
                td { (badge(if p { "paused" } else { "running" })) }
                td.num { (backlog.pending) }
                td { @match backlog.oldest_pending_ms { Some(ms) => { (view::age(now - ms)) }, None => { span.muted { "—" } } } }
                td { (percent(s.success_rate)) }
                td.num { (s.delivered) " / " (s.failed) }
                td {
                    (chart::bars("attempts per minute", &[
                        chart::Series { class: "ok", label: "delivered", values: s.minutes.iter().map(|m| m.delivered).collect() },
                        chart::Series { class: "f", label: "failed", values: s.minutes.iter().map(|m| m.failed).collect() },
                    ]))
                }
                td { (pause_form(ctx, PauseTarget::Sink, &s.name, p)) }
            }
        }
    }
}

fn query(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// `GET /ui/instances`: this replica's counters (since it started) with the store's pauses,
/// last event times and sink backlogs.
pub async fn page(
    req: HttpRequest,
    state: web::Data<AppState>,
    SignedIn(ctx): SignedIn,
) -> HttpResponse {
    let paused = match state.store.paused().await {
        Ok(list) => list,
        Err(e) => return super::admin_error(&ctx, e.into()),
    };
    let is_paused = |target: PauseTarget, name: &str| {
        paused.iter().any(|p| p.target == target && p.name == name)
    };
    let now = state.clock.now().timestamp_millis();
    let instances = state.observer.instances(now);
    let sinks = state.observer.sinks(now);
    let mut last = Vec::with_capacity(instances.len());
    for instance in &instances {
        match crate::routes::health::last_event(&state, &instance.name).await {
            Ok(t) => last.push(t),
            Err(e) => return super::admin_error(&ctx, e.into()),
        }
    }
    let mut backlogs = Vec::with_capacity(sinks.len());
    for sink in &sinks {
        match state.store.backlog(sink.name.clone()).await {
            Ok(b) => backlogs.push(b),
            Err(e) => return super::admin_error(&ctx, e.into()),
        }
    }
    let known = |name: &str| {
        instances.iter().any(|i| i.name == name) || sinks.iter().any(|s| s.name == name)
    };
    let done = web::Query::<Done>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let body = html! {
        // Only names of what is configured: the query string is not ours to echo.
        @if let Some(name) = done.paused.as_ref().filter(|n| known(n)) { (layout::notice(&format!("Paused {name}."))) }
        @if let Some(name) = done.resumed.as_ref().filter(|n| known(n)) { (layout::notice(&format!("Resumed {name}."))) }
        p.muted {
            "Counts are this replica's since it started (" (view::time_ms(state.observer.started_ms()))
            "); p99, skew, success rate and charts cover the last hour. Queue depth, pauses and last events come from the store."
        }
        h2 { "Provider instances" }
        div.wide { table #instances {
            thead { tr {
                th { "Instance" } th { "State" } th.num { "Accepted" } th.num { "Duplicates" }
                th { "Rejected, by reason" } th.num { "p99" }
                th { "Last event (UTC)" } th { "Clock skew" } th { "Last hour" } th {}
            } }
            tbody { (instance_rows(&ctx, &state, &instances, &last, &is_paused)) }
        } }
        (chart::legend(&[("a", "accepted"), ("d", "duplicate"), ("r", "rejected")]))
        h2 { "Sinks" }
        div.wide { table #sinks {
            thead { tr {
                th { "Sink" } th { "State" } th.num { "Queue depth" } th { "Oldest pending" }
                th { "Success (1 h)" } th.num { "Delivered / failed" } th { "Last hour" } th {}
            } }
            tbody { (sink_rows(&ctx, &sinks, &backlogs, now, &is_paused)) }
        } }
        (chart::legend(&[("ok", "delivered"), ("f", "failed")]))
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
    Posted { ctx, .. }: Posted,
) -> HttpResponse {
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
