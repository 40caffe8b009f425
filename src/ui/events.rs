//! `/ui/events` (the list, its filters, search and live tail) and `/ui/events/{id}`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, Nav};
use super::view::{self, badge};
use super::{html as page_html, Ctx, Posted, SignedIn, UiState};
use crate::admin::{self, EnvelopeDetail, ListQuery};
use crate::observe::{DuplicateHits, Observer};
use crate::routes::AppState;
use crate::store::{EventQuery, EventStatus, EventSummary, Receipt, Store};

/// Rows per page.
const PAGE: usize = 50;
/// How often an open live tail looks for events the wake-ups did not announce (unprocessable
/// receipts, other replicas' commits).
const TAIL_POLL: Duration = Duration::from_secs(2);
/// A comment line this often keeps proxies from closing an idle tail.
const TAIL_KEEPALIVE: Duration = Duration::from_secs(15);
/// The tail asks for receipts received since its newest one minus this (receipt ids come from
/// each replica's clock), and shows only ids it has not shown.
const TAIL_SLACK_MS: i64 = 60_000;
/// Bodies up to this size get a pretty-printed view besides the raw one.
const PRETTY_MAX_BYTES: usize = 256 * 1024;
/// Largest answer snippet shown per attempt.
const SNIPPET: usize = 512;

/// The list's query string: the filters of `/admin/events` with form-friendly names, plus the
/// search box `q`. Empty fields (what a form sends for blank inputs) are absent.
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    instance: Option<String>,
    status: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    object: Option<String>,
    action: Option<String>,
    /// `datetime-local` (UTC) or RFC 3339.
    since: Option<String>,
    until: Option<String>,
    q: Option<String>,
    before: Option<String>,
    /// The live tail's cursor: only receipts newer than this id.
    after: Option<String>,
}

fn present(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// A `datetime-local` value (`2024-01-15T10:30`, read as UTC) as RFC 3339; others unchanged.
fn rfc3339(value: Option<String>) -> Option<String> {
    value.map(|v| {
        for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
            if let Ok(t) = chrono::NaiveDateTime::parse_from_str(&v, format) {
                return t.and_utc().to_rfc3339();
            }
        }
        v
    })
}

impl Filters {
    fn list_query(&self, limit: usize) -> ListQuery {
        ListQuery {
            provider: present(&self.instance),
            status: present(&self.status),
            event_id: present(&self.q),
            event_type: present(&self.event_type),
            object: present(&self.object),
            action: present(&self.action),
            since: rfc3339(present(&self.since)),
            until: rfc3339(present(&self.until)),
            limit: Some(limit),
            before: present(&self.before),
        }
    }

    /// The query string of these filters (without the cursors), for links and the tail.
    fn query_string(&self) -> String {
        let pairs: Vec<(&str, String)> = [
            ("instance", &self.instance),
            ("status", &self.status),
            ("type", &self.event_type),
            ("object", &self.object),
            ("action", &self.action),
            ("since", &self.since),
            ("until", &self.until),
            ("q", &self.q),
        ]
        .into_iter()
        .filter_map(|(k, v)| present(v).map(|v| (k, v)))
        .collect();
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }

    fn value(&self, name: &str) -> String {
        let v = match name {
            "instance" => &self.instance,
            "status" => &self.status,
            "type" => &self.event_type,
            "object" => &self.object,
            "action" => &self.action,
            "since" => &self.since,
            "until" => &self.until,
            "q" => &self.q,
            _ => return String::new(),
        };
        present(v).unwrap_or_default()
    }
}

fn filters(req: &HttpRequest) -> Filters {
    web::Query::<Filters>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default()
}

/// A gateway id (receipt or envelope) the search box named, when one is stored.
async fn stored_id(store: &dyn Store, q: &str) -> Result<bool, crate::store::StoreError> {
    if ulid::Ulid::from_string(q).is_err() {
        return Ok(false);
    }
    if store.receipt(q.to_owned()).await?.is_some() {
        return Ok(true);
    }
    match store.envelope(q.to_owned()).await {
        Ok(found) => Ok(found.is_some()),
        Err(crate::store::StoreError::Unreadable(_)) => Ok(true),
        Err(e) => Err(e),
    }
}

/// The gateway id a provider event id is claimed by, from the idempotency table (one indexed
/// lookup per instance; claims last `storage.dedup_ttl_secs`): `Some` when exactly one
/// instance (the chosen one, or any configured) has it. Otherwise the list searches receipts.
async fn claimed(
    state: &AppState,
    instance: Option<String>,
    event_id: &str,
) -> Result<Option<String>, crate::store::StoreError> {
    let instances = match instance {
        Some(name) => vec![name],
        None => crate::routes::admin::instance_names(state),
    };
    let mut found = None;
    for provider in instances {
        let key = crate::store::DedupKey {
            provider,
            event_id: event_id.to_owned(),
        };
        if let Some(id) = state.store.find_duplicate(key).await? {
            if found.is_some() {
                return Ok(None);
            }
            found = Some(id);
        }
    }
    Ok(found.filter(|id| ulid::Ulid::from_string(id).is_ok()))
}

/// The `status` choice that lists events by their duplicate deliveries (kept in memory by
/// this replica, not in the store).
const DUPLICATE_STATUS: &str = "duplicate";

/// Duplicate deliveries this replica saw of any of the receipt's events.
fn duplicate_hits(observer: &Observer, receipt: &Receipt) -> Option<DuplicateHits> {
    receipt
        .envelope_ids
        .iter()
        .filter_map(|id| observer.duplicate_hits(id))
        .reduce(|a, b| DuplicateHits {
            count: a.count + b.count,
            last_ms: a.last_ms.max(b.last_ms),
        })
}

/// The "duplicates ×N" badge of a list row or an event page.
fn duplicate_badge(hits: Option<DuplicateHits>) -> Markup {
    html! {
        @if let Some(hits) = hits {
            @let last = chrono::DateTime::from_timestamp_millis(hits.last_ms)
                .map(crate::envelope::format_millis)
                .unwrap_or_default();
            " "
            span.badge.duplicate title={ "duplicate deliveries seen by this replica; the last at " (last) } {
                "duplicates ×" (hits.count)
            }
        }
    }
}

/// One row of the list (also what the live tail pushes).
pub fn row(observer: &Observer, event: &EventSummary) -> Markup {
    let receipt = &event.receipt;
    let status = view::event_status(receipt, &event.tasks);
    let hits = duplicate_hits(observer, receipt);
    let link = format!("/ui/events/{}", receipt.id);
    html! {
        tr data-id=(receipt.id) {
            td { a href=(link) { (view::time(&receipt.received_at)) } }
            td { (receipt.provider) }
            td.mono { (receipt.event_id.as_deref().unwrap_or("—")) }
            td {
                @if receipt.types.is_empty() { span.muted { "—" } }
                @for t in receipt.types.iter().take(3) { div { (t) } }
                @if receipt.types.len() > 3 { div.muted { "+" (receipt.types.len() - 3) " more" } }
            }
            td { (badge(status)) (duplicate_badge(hits)) }
            td.chips {
                @for task in event.tasks.iter().take(8) {
                    span class={ "badge " (view::task_status(task.status)) }
                        title={ (task.attempts) " attempt(s)" } {
                        (task.sink) ": " (view::task_status(task.status))
                    }
                }
                @if event.tasks.len() > 8 { span.muted { "+" (event.tasks.len() - 8) } }
            }
            td.mono { a href=(link) { (receipt.id) } }
        }
    }
}

fn filter_form(state: &AppState, f: &Filters) -> Markup {
    let instances = crate::routes::admin::instance_names(state);
    let chosen = f.value("instance");
    let status = f.value("status");
    html! {
        form.filters method="get" action="/ui/events" {
            label { "Search"
                input type="search" name="q" value=(f.value("q"))
                    placeholder="provider event id or gateway id";
            }
            label { "Instance"
                select name="instance" {
                    option value="" { "all" }
                    @for name in &instances {
                        option value=(name) selected[*name == chosen] { (name) }
                    }
                }
            }
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for (name, _) in EventStatus::ALL {
                        option value=(name) selected[name == status] { (name) }
                    }
                    option value=(DUPLICATE_STATUS) selected[status == DUPLICATE_STATUS] {
                        "duplicate hits"
                    }
                }
            }
            label { "Type" input name="type" value=(f.value("type")) placeholder="customer.*" size="14"; }
            label { "Object" input name="object" value=(f.value("object")) placeholder="deal" size="10"; }
            label { "Action" input name="action" value=(f.value("action")) placeholder="updated" size="9"; }
            label { "Since (UTC)" input type="datetime-local" name="since" value=(f.value("since")); }
            label { "Until (UTC)" input type="datetime-local" name="until" value=(f.value("until")); }
            button.primary type="submit" { "Filter" }
            a href="/ui/events" { "clear" }
        }
    }
}

fn table(rows: Markup, stream: Option<String>) -> Markup {
    html! {
        table #events {
            thead { tr {
                th { "Received (UTC)" } th { "Instance" } th { "Event id" } th { "Type" }
                th { "Status" } th { "Deliveries" } th { "Gateway id" }
            } }
            tbody #events-body data-stream=[stream] { (rows) }
        }
    }
}

/// `GET /ui/events`: newest first, filtered, `before` cursor pages; a gateway id in the search
/// box goes straight to its page.
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    SignedIn(ctx): SignedIn,
) -> HttpResponse {
    let f = filters(&req);
    if let Some(q) = present(&f.q) {
        match stored_id(&*state.store, &q).await {
            Ok(true) => return super::redirect(&format!("/ui/events/{q}")),
            Ok(false) => {}
            Err(e) => return super::admin_error(&ctx, e.into()),
        }
        match claimed(&state, present(&f.instance), &q).await {
            Ok(Some(id)) => return super::redirect(&format!("/ui/events/{id}")),
            Ok(None) => {}
            Err(e) => return super::admin_error(&ctx, e.into()),
        }
    }
    if f.status.as_deref() == Some(DUPLICATE_STATUS) {
        return duplicates_list(&state, &ctx, &f).await;
    }
    let query = match f.list_query(PAGE).to_query() {
        Ok(query) => query,
        Err(e) => {
            let body = html! { (filter_form(&state, &f)) (layout::notice_error(&e.to_string())) };
            return page_html(
                StatusCode::BAD_REQUEST,
                layout::page(&ctx, Nav::Events, "Events", body),
            );
        }
    };
    let first_page = query.before.is_none();
    let page = match state.store.events(query).await {
        Ok(page) => page,
        Err(e) => return super::admin_error(&ctx, e.into()),
    };
    let filters_qs = f.query_string();
    // The tail starts after the newest row shown (or now, on an empty first page).
    let stream = first_page.then(|| {
        let after = page.events.first().map_or_else(
            || ulid::Ulid::from_parts(state.clock.now().timestamp_millis() as u64, 0).to_string(),
            |e| e.receipt.id.clone(),
        );
        let mut qs = filters_qs.clone();
        if !qs.is_empty() {
            qs.push('&');
        }
        qs.push_str(&serde_urlencoded::to_string([("after", after)]).unwrap_or_default());
        format!("/ui/events/stream?{qs}")
    });
    let older = page.next.as_ref().map(|next| {
        let mut qs = filters_qs.clone();
        if !qs.is_empty() {
            qs.push('&');
        }
        qs.push_str(&serde_urlencoded::to_string([("before", next)]).unwrap_or_default());
        format!("/ui/events?{qs}")
    });
    let rows = html! {
        @for event in &page.events { (row(&state.observer, event)) }
        @if page.events.is_empty() {
            tr #no-events { td colspan="7" .muted { "No events match." } }
        }
    };
    let body = html! {
        (filter_form(&state, &f))
        div.actions {
            @if first_page {
                span #tail-status .tail.off { "live: connecting…" }
            } @else {
                a href={ "/ui/events?" (filters_qs) } { "← newest" }
            }
        }
        (table(rows, stream))
        div.pager {
            span.muted { (page.events.len()) " shown" }
            @if let Some(older) = older { a #older href=(older) { "older →" } }
        }
    };
    page_html(
        StatusCode::OK,
        layout::page(&ctx, Nav::Events, "Events", body),
    )
}

/// `GET /ui/events?status=duplicate`: the events this replica answered duplicates for, the
/// latest hit first (the counts live in memory, so the store's filters and pages do not apply;
/// the instance filter does). Each is read by id: at most two pages' worth of reads.
async fn duplicates_list(state: &AppState, ctx: &Ctx, f: &Filters) -> HttpResponse {
    let instance = present(&f.instance);
    let mut events = Vec::new();
    for (id, _) in state.observer.recent_duplicates(2 * PAGE) {
        // Batch events after the first have no receipt of their own id: listed by the first.
        let receipt = match state.store.receipt(id).await {
            Ok(Some((receipt, _))) => receipt,
            Ok(None) => continue,
            Err(e) => return super::admin_error(ctx, e.into()),
        };
        if instance.as_ref().is_some_and(|i| *i != receipt.provider) {
            continue;
        }
        let mut tasks = Vec::new();
        for envelope in &receipt.envelope_ids {
            match state.store.tasks(envelope.clone()).await {
                Ok(found) => tasks.extend(found),
                Err(e) => return super::admin_error(ctx, e.into()),
            }
        }
        events.push(EventSummary { receipt, tasks });
        if events.len() == PAGE {
            break;
        }
    }
    let rows = html! {
        @for event in &events { (row(&state.observer, event)) }
        @if events.is_empty() {
            tr #no-events { td colspan="7" .muted { "No duplicate deliveries seen by this replica since it started." } }
        }
    };
    let body = html! {
        (filter_form(state, f))
        p.muted {
            "Events this replica answered "
            code { "duplicate" }
            " for since it started, the latest hit first (counts are kept in memory per replica; only the instance filter applies)."
        }
        (table(rows, None))
        div.pager { span.muted { (events.len()) " shown" } }
    };
    page_html(
        StatusCode::OK,
        layout::page(ctx, Nav::Events, "Events", body),
    )
}

/// What one open live tail holds between polls.
struct Tail {
    store: Arc<dyn Store>,
    ui: web::Data<UiState>,
    state: web::Data<AppState>,
    cookie: Option<String>,
    query: EventQuery,
    after: String,
    wakeups: tokio::sync::watch::Receiver<u64>,
    /// Frames ready to send.
    queue: std::collections::VecDeque<String>,
    idle_since: tokio::time::Instant,
    ended: bool,
    /// Counts this tail as open until the stream is dropped.
    _slot: super::TailSlot,
}

/// An SSE frame: `event`, optional `id`, and `data` split on line breaks as SSE requires.
fn frame(event: &str, id: Option<&str>, data: &str) -> String {
    let mut out = format!("event: {event}\n");
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    // A bare CR ends a line in an event stream too: split on both, so no stored text (an event
    // type may hold one) can start a field of its own.
    for line in data.split(['\n', '\r']) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

impl Tail {
    /// The session is still valid (a tail ends when its session does).
    fn signed_in(&self) -> bool {
        let Some(sessions) = &self.ui.sessions else {
            return false;
        };
        let now = self.state.clock.now().timestamp();
        self.cookie
            .as_deref()
            .and_then(|c| sessions.verify(c, now))
            .is_some()
    }

    /// Receipts newer than the cursor, oldest first, as frames.
    async fn poll(&mut self) {
        let since = ulid::Ulid::from_string(&self.after)
            .map(|u| u.timestamp_ms() as i64 - TAIL_SLACK_MS)
            .unwrap_or(0);
        let mut query = self.query.clone();
        query.since_ms = Some(query.since_ms.map_or(since, |s| s.max(since)));
        let limit = query.limit;
        match self.store.events(query).await {
            Ok(page) => {
                let new: Vec<&EventSummary> = page
                    .events
                    .iter()
                    .filter(|e| e.receipt.id > self.after)
                    .collect();
                if new.len() == limit {
                    self.queue.push_back(frame("gap", None, ""));
                }
                for event in new.iter().rev() {
                    let markup = row(&self.state.observer, event).into_string();
                    self.queue
                        .push_back(frame("row", Some(&event.receipt.id), &markup));
                }
                if let Some(newest) = new.first() {
                    self.after = newest.receipt.id.clone();
                }
            }
            Err(e) => tracing::debug!(error = %e, "Live tail: the store did not answer."),
        }
    }

    async fn next_frame(mut self) -> Option<(Result<web::Bytes, std::convert::Infallible>, Self)> {
        loop {
            if let Some(frame) = self.queue.pop_front() {
                self.idle_since = tokio::time::Instant::now();
                return Some((Ok(web::Bytes::from(frame)), self));
            }
            if self.ended {
                return None;
            }
            if !self.signed_in() {
                self.ended = true;
                self.queue.push_back(frame("end", None, "signed out"));
                continue;
            }
            let keepalive = self.idle_since + TAIL_KEEPALIVE;
            tokio::select! {
                changed = self.wakeups.changed() => {
                    if changed.is_err() {
                        // The store is closing: the browser reconnects later.
                        self.ended = true;
                        continue;
                    }
                }
                _ = tokio::time::sleep(TAIL_POLL) => {}
                _ = tokio::time::sleep_until(keepalive) => {
                    self.queue.push_back(": keepalive\n\n".to_owned());
                    continue;
                }
            }
            self.poll().await;
        }
    }
}

/// `GET /ui/events/stream?<filters>&after=<id>`: Server-Sent Events, one `row` event (the
/// rendered table row) per new receipt that matches the filters. New commits are noticed
/// through the store's wake-ups (and a poll every [`TAIL_POLL`]); each look is one indexed
/// newest-first query bounded by time and limit. A reconnecting browser's `Last-Event-ID`
/// resumes where it stopped.
pub async fn stream(
    req: HttpRequest,
    state: web::Data<AppState>,
    ui: web::Data<UiState>,
) -> HttpResponse {
    let sessions = match super::enabled(&ui) {
        Ok(s) => s,
        Err(response) => return response,
    };
    let now = state.clock.now().timestamp();
    if super::session_of(&req, sessions, now).is_none() {
        return super::forbidden("Sign in first.");
    }
    let Some(slot) = ui.tail_slot() else {
        return HttpResponse::ServiceUnavailable()
            .insert_header((actix_web::http::header::RETRY_AFTER, "10"))
            .content_type("text/plain; charset=utf-8")
            .body("too many live tails are open on this replica");
    };
    let cookie = req
        .headers()
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| super::session::cookie_value(h, super::session::COOKIE))
        .map(str::to_owned);
    let f = filters(&req);
    let mut query = match f.list_query(PAGE).to_query() {
        Ok(query) => query,
        Err(e) => {
            return HttpResponse::BadRequest()
                .content_type("text/plain; charset=utf-8")
                .body(e.to_string())
        }
    };
    query.before = None;
    let resume = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let after = resume
        .or_else(|| present(&f.after))
        .filter(|a| ulid::Ulid::from_string(a).is_ok())
        .unwrap_or_else(|| {
            ulid::Ulid::from_parts(state.clock.now().timestamp_millis() as u64, 0).to_string()
        });
    let mut wakeups = state.store.wakeups();
    wakeups.mark_unchanged();
    let tail = Tail {
        store: state.store.clone(),
        ui: ui.clone(),
        state: state.clone(),
        cookie,
        query,
        after,
        wakeups,
        // Opens the stream at once (the browser shows "connected").
        queue: [": hookgate live tail\n\n".to_owned()].into(),
        idle_since: tokio::time::Instant::now(),
        ended: false,
        _slot: slot,
    };
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(futures_util::stream::unfold(tail, Tail::next_frame))
}

/// `?redelivered=N` after a redelivery.
#[derive(Debug, Default, Deserialize)]
struct ShowQuery {
    redelivered: Option<usize>,
}

fn body_views(body: &[u8]) -> Markup {
    match std::str::from_utf8(body) {
        Ok(text) => {
            // Past this size the raw view alone is shown (a page stays a few hundred KiB).
            let pretty = (text.len() <= PRETTY_MAX_BYTES)
                .then(|| view::pretty_json(text))
                .flatten();
            html! {
                @if let Some(pretty) = &pretty {
                    details open { summary { "Pretty JSON" } pre #body-pretty { (pretty) } }
                }
                details open[pretty.is_none()] {
                    summary { "Raw (exact bytes as received, " (body.len()) " bytes)" }
                    pre #body-raw { (text) }
                }
            }
        }
        Err(_) => {
            use base64::Engine as _;
            html! {
                p.muted { "The body is not UTF-8; base64 of its " (body.len()) " bytes:" }
                pre #body-raw { (base64::engine::general_purpose::STANDARD.encode(body)) }
            }
        }
    }
}

fn diff_table(current: &serde_json::Value, previous: &serde_json::Value) -> Markup {
    let (rows, cut) = view::diff(current, previous);
    html! {
        @if rows.is_empty() {
            p.muted { "No current or previous state." }
        } @else {
            table.diff {
                thead { tr { th { "Field" } th { "Previous" } th { "Current" } } }
                tbody {
                    @for r in &rows {
                        tr class=(r.change.class()) {
                            td.mono { (r.path) }
                            td.mono { (r.previous.as_deref().unwrap_or("—")) }
                            td.mono { (r.current.as_deref().unwrap_or("—")) }
                        }
                    }
                }
            }
            @if cut { p.muted { "Only the first " (view::MAX_DIFF_ROWS) " fields are shown; the full envelope is below." } }
        }
    }
}

fn redeliver_form(ctx: &Ctx, id: &str, sink: Option<&str>) -> Markup {
    let label = match sink {
        Some(sink) => format!("Redeliver to {sink}"),
        None => "Redeliver to all sinks".to_owned(),
    };
    html! {
        form.inline method="post" action={ "/ui/events/" (id) "/redeliver" } {
            (layout::csrf_field(ctx))
            @if let Some(sink) = sink { input type="hidden" name="sink" value=(sink); }
            button type="submit" class=[sink.is_none().then_some("primary")] { (label) }
        }
    }
}

fn envelope_section(ctx: &Ctx, item: &EnvelopeDetail) -> Markup {
    html! {
        section.card.envelope data-envelope=(item.id) {
            h2 { "Envelope " span.mono { (item.id) } }
            @match &item.envelope {
                Err(error) => { (layout::notice_error(error)) }
                Ok(envelope) => {
                    dl.facts {
                        dt { "type" } dd { (envelope.event_type) }
                        dt { "object / action" } dd { (envelope.object) " / " (envelope.action) }
                        dt { "object_id" } dd.mono { (envelope.object_id.as_deref().unwrap_or("—")) }
                        dt { "event_id" } dd.mono { (envelope.event_id) }
                        dt { "occurred_at" } dd { (envelope.occurred_at.as_deref().unwrap_or("—")) }
                    }
                    h3 { "current vs previous" }
                    (diff_table(
                        envelope.current.as_ref().unwrap_or(&serde_json::Value::Null),
                        envelope.previous.as_ref().unwrap_or(&serde_json::Value::Null),
                    ))
                    details {
                        summary { "Whole envelope (as delivered)" }
                        pre.envelope-json {
                            (serde_json::to_string_pretty(envelope).unwrap_or_default())
                        }
                    }
                }
            }
            h3 { "Deliveries" }
            @if item.deliveries.is_empty() { p.muted { "No sink matched this envelope." } }
            @for (task, attempts) in &item.deliveries {
                div.delivery data-sink=(task.sink) {
                    div.actions {
                        strong { (task.sink) }
                        (badge(view::task_status(task.status)))
                        span.muted { (task.attempts) " attempt(s)" }
                        @if let Some(next) = task.next_attempt_ms.filter(|_| task.status == crate::store::TaskStatus::Pending) {
                            span.muted { "next attempt " (view::time_ms(next)) }
                        }
                        (redeliver_form(ctx, &item.id, Some(&task.sink)))
                    }
                    @if attempts.is_empty() {
                        p.muted { "Not attempted yet." }
                    } @else {
                        table.attempts {
                            thead { tr {
                                th.num { "#" } th { "At (UTC)" } th { "Outcome" } th.num { "Status" }
                                th.num { "Duration" } th { "Error" } th { "Answer" }
                            } }
                            tbody {
                                @for a in attempts {
                                    tr {
                                        td.num { (a.number) }
                                        td { (view::time(&a.at)) }
                                        td { (badge(match a.outcome {
                                            crate::store::AttemptOutcome::Delivered => "delivered",
                                            crate::store::AttemptOutcome::Retry => "retry",
                                            crate::store::AttemptOutcome::Dead => "dead",
                                        })) }
                                        td.num {
                                            @if let Some(s) = a.http_status { (s) }
                                            @else if let Some(code) = a.exit_code { "exit " (code) }
                                            @else { "—" }
                                        }
                                        td.num { (a.duration_ms) " ms" }
                                        td { (a.error.as_deref().unwrap_or("")) }
                                        td.mono { (snippet(a.response.as_deref().unwrap_or(""))) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn sorted_headers(headers: &[(String, String)]) -> Vec<&(String, String)> {
    let mut sorted: Vec<&(String, String)> = headers.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted
}

fn snippet(text: &str) -> &str {
    match text.char_indices().nth(SNIPPET) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// `GET /ui/events/{id}`: one event (a receipt or envelope id).
pub async fn show(
    req: HttpRequest,
    state: web::Data<AppState>,
    SignedIn(ctx): SignedIn,
) -> HttpResponse {
    let id = req.match_info().get("id").unwrap_or_default().to_owned();
    let detail = match admin::detail(&*state.store, &id).await {
        Ok(Some(detail)) => detail,
        Ok(None) => {
            return super::error_page(&ctx, StatusCode::NOT_FOUND, "No stored event has this id.")
        }
        Err(e) => return super::admin_error(&ctx, e),
    };
    let done = web::Query::<ShowQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let body = html! {
        @if let Some(n) = done.redelivered {
            (layout::notice(&format!("Redelivery scheduled: {n} delivery task(s) are pending again.")))
        }
        div.actions { (redeliver_form(&ctx, &id, None)) }
        @if let Some((receipt, body)) = &detail.receipt {
            section.card {
                h2 { "Received" }
                dl.facts {
                    dt { "gateway id" } dd.mono { (receipt.id) }
                    dt { "instance" } dd { (receipt.provider) " (kind " (receipt.kind) ")" }
                    dt { "provider event id" } dd.mono { (receipt.event_id.as_deref().unwrap_or("—")) }
                    dt { "duplicates" } dd #duplicates {
                        @match duplicate_hits(&state.observer, receipt) {
                            Some(hits) => { (duplicate_badge(Some(hits))) }
                            None => { span.muted { "none seen by this replica since it started" } }
                        }
                    }
                    dt { "received at" } dd { (view::time(&receipt.received_at)) }
                    dt { "client IP" } dd.mono { (receipt.client_ip.as_deref().unwrap_or("—")) }
                    dt { "verdict" } dd #verdict {
                        (badge("ok")) " authenticated by the "
                        code { (receipt.kind) } " rules over the exact bytes; "
                        @match receipt.status {
                            crate::store::ReceiptStatus::Accepted => {
                                "normalised into " (receipt.envelope_ids.len()) " envelope(s)."
                            }
                            crate::store::ReceiptStatus::Unprocessable => {
                                (badge("unprocessable")) " "
                                (receipt.error.as_deref().unwrap_or("could not be normalised"))
                            }
                        }
                    }
                }
                h3 { "Headers" }
                p.muted { "As received (sorted by name), minus credential headers: those are never stored." }
                table.headers {
                    tbody {
                        @for (name, value) in sorted_headers(&receipt.headers) {
                            tr { td.mono { (name) } td.mono { (value) } }
                        }
                    }
                }
                h3 { "Body" }
                (body_views(body))
            }
        } @else {
            (layout::notice("This id names an envelope; its receipt is not stored here (or was purged)."))
        }
        @for item in &detail.envelopes { (envelope_section(&ctx, item)) }
    };
    let title = format!("Event {id}");
    page_html(
        StatusCode::OK,
        layout::page(&ctx, Nav::Events, &title, body),
    )
}

/// `POST /ui/events/{id}/redeliver` (`csrf`, optional `sink`): back to the event's page.
pub async fn redeliver(
    req: HttpRequest,
    state: web::Data<AppState>,
    Posted { ctx, fields }: Posted,
) -> HttpResponse {
    let id = req.match_info().get("id").unwrap_or_default().to_owned();
    let sink = super::field(&fields, "sink");
    if sink.is_some_and(|s| state.dispatcher.route(s).is_none()) {
        return super::error_page(
            &ctx,
            StatusCode::NOT_FOUND,
            "No sink with this name is configured.",
        );
    }
    let now = state.clock.now().timestamp_millis();
    match admin::redeliver(&*state.store, &id, sink, now).await {
        Ok(Some(count)) => super::redirect(&format!("/ui/events/{id}?redelivered={count}")),
        Ok(None) => super::error_page(&ctx, StatusCode::NOT_FOUND, "No stored event has this id."),
        Err(e) => super::admin_error(&ctx, e),
    }
}

#[cfg(test)]
mod tests {
    use super::frame;

    #[test]
    fn no_stored_text_can_start_a_field_of_its_own() {
        let framed = frame("row", Some("01J"), "<tr>\revent: x\r\nid: 9\nretry: 1</tr>");
        assert_eq!(
            framed,
            "event: row\nid: 01J\ndata: <tr>\ndata: event: x\ndata: \ndata: id: 9\ndata: retry: 1</tr>\n\n"
        );
        assert!(!framed.contains('\r'));
        for line in framed.lines() {
            assert!(
                line.is_empty()
                    || ["event: ", "id: ", "data: "]
                        .iter()
                        .any(|p| line.starts_with(p)),
                "{line}"
            );
        }
    }
}
