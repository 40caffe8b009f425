//! `/ui/rejected`: the last rejected requests, from this replica's ring (see
//! [`crate::observe`]: at most 1000 kept, no bodies, no headers).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use maud::html;
use serde::Deserialize;

use super::layout::{self, Nav};
use super::view;
use super::{html as page_html, SignedIn};
use crate::observe::{RejectionQuery, REJECTION_RING};
use crate::routes::AppState;

/// Rows shown unless `limit` says otherwise.
const SHOWN: usize = 200;

#[derive(Debug, Default, Deserialize)]
struct Filter {
    instance: Option<String>,
    code: Option<String>,
    limit: Option<usize>,
}

fn present(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// `GET /ui/rejected?instance=&code=&limit=`.
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    SignedIn(ctx): SignedIn,
) -> HttpResponse {
    let filter = web::Query::<Filter>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let instance = present(filter.instance);
    let code = present(filter.code);
    let limit = filter.limit.unwrap_or(SHOWN).clamp(1, REJECTION_RING);
    let rejections = state.observer.rejections(&RejectionQuery {
        instance: instance.clone(),
        code: code.clone(),
        limit,
    });
    // The codes to choose from: those of every kept rejection.
    let mut codes: Vec<&'static str> = state
        .observer
        .rejections(&RejectionQuery {
            limit: REJECTION_RING,
            ..RejectionQuery::default()
        })
        .iter()
        .map(|r| r.code)
        .collect();
    codes.sort_unstable();
    codes.dedup();
    if let Some(c) = code.as_deref() {
        if !codes.contains(&c) {
            codes.clear();
        }
    }
    let mut instances = crate::routes::admin::instance_names(&state);
    instances.push("unknown".to_owned());
    let body = html! {
        p.muted {
            "The last " (REJECTION_RING) " requests this replica refused (since it started), newest first. "
            "Bodies and headers of refused requests are never kept."
        }
        form.filters method="get" action="/ui/rejected" {
            label { "Instance"
                select name="instance" {
                    option value="" { "all" }
                    @for name in &instances {
                        option value=(name) selected[Some(name.as_str()) == instance.as_deref()] { (name) }
                    }
                }
            }
            label { "Code"
                select name="code" {
                    option value="" { "any" }
                    @if let Some(c) = code.as_deref().filter(|c| !codes.contains(c)) {
                        option value=(c) selected { (c) }
                    }
                    @for c in &codes {
                        option value=(c) selected[Some(*c) == code.as_deref()] { (c) }
                    }
                }
            }
            button.primary type="submit" { "Filter" }
            a href="/ui/rejected" { "clear" }
        }
        table #rejected {
            thead { tr {
                th { "At (UTC)" } th { "Instance" } th { "Client IP" } th.num { "Status" }
                th { "Code" } th { "Message" }
            } }
            tbody {
                @if rejections.is_empty() { tr { td colspan="6" .muted { "No rejections kept." } } }
                @for r in &rejections {
                    tr data-code=(r.code) {
                        td { (view::time_ms(r.at_ms)) }
                        td { (r.instance) }
                        td.mono { @match r.client_ip { Some(ip) => { (ip) }, None => { "—" } } }
                        td.num { (r.status) }
                        td { span.badge.bad { (r.code) } }
                        td { (r.message) }
                    }
                }
            }
        }
    };
    page_html(
        StatusCode::OK,
        layout::page(&ctx, Nav::Rejected, "Rejected requests", body),
    )
}
