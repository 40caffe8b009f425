//! The dashboard at `/ui` (DESIGN §7): server-rendered HTML for operators, served by the same
//! binary when `[admin] token` is set (every `/ui` route answers 404 otherwise).
//!
//! Templates are [maud](https://maud.lambda.xyz): HTML written as Rust macros, checked and
//! compiled with the binary, so there are no template files to ship or find at run time and a
//! typo is a compile error. Every `(value)` splice is HTML-escaped, and nothing here uses
//! `PreEscaped`: the SVG charts are maud markup built from numbers like every page.
//!
//! No inline script or style: [`assets`] serves one stylesheet and one small script compiled
//! into the binary, and the Content-Security-Policy allows only those (`default-src 'self'`).
//! Every `/ui` answer carries [`security_headers`]. Sessions and CSRF: [`session`].
//!
//! Every page reads the store through the event browser's indexed queries with a limit
//! (newest-first pages with a `before` cursor, dead letters by sink), never a count of all
//! events.

// Guards and helpers return the refusal or error page itself (`Err(HttpResponse)`), for the
// handler to answer at once; it is the rare path, so its size does not matter.
#![allow(clippy::result_large_err)]

mod assets;
mod chart;
mod dead;
mod events;
mod instances;
mod layout;
mod rejected;
pub mod session;
mod view;

use std::net::IpAddr;

use actix_web::body::MessageBody;
use actix_web::dev::Payload;
use actix_web::dev::{HttpServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use futures_util::future::LocalBoxFuture;

use crate::config::RateLimitSettings;
use crate::error::GatewayError;
use crate::pipeline::access::{self, ClientLimiter};
use crate::routes::AppState;
use crate::secret::Secret;
use session::{Session, Sessions};

/// What the dashboard keeps beside [`AppState`].
#[derive(Debug)]
pub struct UiState {
    /// `None` without an admin token: the dashboard is off.
    sessions: Option<Sessions>,
    /// Sign-in attempts per client IP: 10 at once, then one every 6 s.
    login_limiter: ClientLimiter,
    /// Live tails open now (at most [`MAX_TAILS`]).
    tails: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Live tails one replica serves at once; more are answered 503 (the browser retries).
pub const MAX_TAILS: usize = 64;

/// One open live tail, counted until it is dropped.
pub struct TailSlot(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for TailSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl UiState {
    pub fn new(admin_token: Option<&Secret>) -> Self {
        Self {
            sessions: admin_token.map(Sessions::new),
            login_limiter: ClientLimiter::new(RateLimitSettings {
                per_second: 1.0 / 6.0,
                burst: 10,
                status: 429,
            }),
            tails: Default::default(),
        }
    }

    /// A slot for one more live tail, unless [`MAX_TAILS`] are open.
    pub fn tail_slot(&self) -> Option<TailSlot> {
        use std::sync::atomic::Ordering;
        self.tails
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_TAILS).then_some(n + 1)
            })
            .ok()
            .map(|_| TailSlot(self.tails.clone()))
    }
}

/// Clients the sign-in limiter tracks before idle ones are forgotten.
const MAX_LOGIN_CLIENTS: usize = 10_000;

/// The policy of every `/ui` answer: scripts, styles and images from this origin only (the
/// SVG charts are inline markup, not `data:` images), no framing, no plugins.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `/ui` and everything under it.
pub fn scope() -> impl HttpServiceFactory {
    web::scope("/ui")
        .wrap(actix_web::middleware::from_fn(security_headers))
        .route("", web::get().to(home))
        .route("/", web::get().to(home))
        .route("/login", web::get().to(login_page))
        .route("/login", web::post().to(login))
        .route("/logout", web::post().to(logout))
        .route("/assets/{file}", web::get().to(assets::serve))
        .route("/events", web::get().to(events::list))
        .route("/events/stream", web::get().to(events::stream))
        .route("/events/{id}", web::get().to(events::show))
        .route("/events/{id}/redeliver", web::post().to(events::redeliver))
        .route("/dead-letters", web::get().to(dead::list))
        .route("/dead-letters/redeliver", web::get().to(dead::confirm))
        .route(
            "/dead-letters/redeliver",
            web::post().to(dead::redeliver_all),
        )
        .route(
            "/dead-letters/redeliver-one",
            web::post().to(dead::redeliver_one),
        )
        .route("/instances", web::get().to(instances::page))
        .route("/rejected", web::get().to(rejected::list))
        .route(
            "/{target:instances|sinks}/{name}/{action}",
            web::post().to(instances::set_paused),
        )
        .default_service(web::to(not_found))
}

/// Security headers on every `/ui` answer, errors and redirects included.
async fn security_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut response = next.call(req).await?;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    Ok(response)
}

/// What a signed-in request knows: its session and the CSRF token its forms carry.
pub struct Ctx {
    pub session: Session,
    pub csrf: String,
}

fn now_secs(state: &AppState) -> i64 {
    state.clock.now().timestamp()
}

/// The dashboard's sessions, or the 404 every `/ui` route answers without an admin token.
fn enabled(ui: &UiState) -> Result<&Sessions, HttpResponse> {
    ui.sessions
        .as_ref()
        .ok_or_else(|| GatewayError::NotFound.error_response())
}

fn session_of(req: &HttpRequest, sessions: &Sessions, now: i64) -> Option<Session> {
    // Every `Cookie` header (HTTP/2 may send several).
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| session::cookie_value(h, session::COOKIE))
        .and_then(|value| sessions.verify(value, now))
}

/// Why a dashboard request does not reach its handler; answered as its page or redirect.
#[derive(Debug)]
pub enum Refusal {
    /// No admin token: every `/ui` route is 404.
    Off,
    /// Not signed in: to the sign-in page, then back to this path.
    SignIn(String),
    /// A POST without a valid session, from another origin, or without its CSRF token.
    Forbidden(&'static str),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Off => f.write_str("the dashboard is off"),
            Refusal::SignIn(_) => f.write_str("not signed in"),
            Refusal::Forbidden(why) => f.write_str(why),
        }
    }
}

impl ResponseError for Refusal {
    fn status_code(&self) -> StatusCode {
        match self {
            Refusal::Off => StatusCode::NOT_FOUND,
            Refusal::SignIn(_) => StatusCode::SEE_OTHER,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Refusal::Off => GatewayError::NotFound.error_response(),
            Refusal::SignIn(target) => redirect(target),
            Refusal::Forbidden(why) => forbidden(why),
        }
    }
}

fn states(req: &HttpRequest) -> Result<(&AppState, &UiState), Refusal> {
    match (
        req.app_data::<web::Data<AppState>>(),
        req.app_data::<web::Data<UiState>>(),
    ) {
        (Some(state), Some(ui)) => Ok((state, ui)),
        _ => Err(Refusal::Off),
    }
}

/// A page's guard: the signed-in context, or a redirect to the sign-in page (then back here).
fn page_guard(req: &HttpRequest) -> Result<Ctx, Refusal> {
    let (state, ui) = states(req)?;
    let sessions = ui.sessions.as_ref().ok_or(Refusal::Off)?;
    match session_of(req, sessions, now_secs(state)) {
        Some(session) => Ok(Ctx {
            csrf: sessions.csrf(&session),
            session,
        }),
        None => {
            let back = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/ui/events");
            Err(Refusal::SignIn(format!(
                "/ui/login?next={}",
                serde_urlencoded::to_string([("", back)])
                    .unwrap_or_default()
                    .trim_start_matches('=')
            )))
        }
    }
}

/// A POST's guard: a valid session, a same-origin request, and the session's CSRF token in
/// the form field `csrf`; anything else is 403. Returns the context and the form's fields.
fn post_guard(req: &HttpRequest, body: &[u8]) -> Result<Posted, Refusal> {
    let (state, ui) = states(req)?;
    let sessions = ui.sessions.as_ref().ok_or(Refusal::Off)?;
    let Some(session) = session_of(req, sessions, now_secs(state)) else {
        return Err(Refusal::Forbidden("Your session has ended. Sign in again."));
    };
    if !same_origin(req) {
        return Err(Refusal::Forbidden("Cross-origin form posts are refused."));
    }
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    let sent = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    if !sessions.csrf_matches(&session, sent) {
        return Err(Refusal::Forbidden(
            "The form's CSRF token is missing or wrong. Reload the page and try again.",
        ));
    }
    Ok(Posted {
        ctx: Ctx {
            csrf: sessions.csrf(&session),
            session,
        },
        fields,
    })
}

/// A signed-in page request ([`page_guard`] as an extractor: its refusal is the answer).
pub struct SignedIn(pub Ctx);

impl FromRequest for SignedIn {
    type Error = Refusal;
    type Future = std::future::Ready<Result<Self, Refusal>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(page_guard(req).map(SignedIn))
    }
}

/// A signed-in, same-origin form post with its session's CSRF token ([`post_guard`]), and
/// the form's fields.
pub struct Posted {
    pub ctx: Ctx,
    pub fields: Vec<(String, String)>,
}

impl FromRequest for Posted {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let body = web::Bytes::from_request(&req, payload);
        Box::pin(async move {
            let body = body.await?;
            Ok(post_guard(&req, &body)?)
        })
    }
}

/// The first value of form field `name` (empty ones count as absent).
fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// Browsers send `Origin` with every POST; when present it must name this host.
fn same_origin(req: &HttpRequest) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let origin = origin.to_str().unwrap_or_default();
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or_default();
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// The request came over HTTPS: only a trusted proxy's `X-Forwarded-Proto`/`Forwarded` says
/// so (hookgate itself serves plain HTTP). The session cookie is then `Secure`.
fn is_https(req: &HttpRequest, state: &AppState) -> bool {
    let trusted = req.peer_addr().is_some_and(|peer| {
        let ip = access::canonical(peer.ip());
        state.trusted_proxies.iter().any(|net| net.contains(&ip))
    });
    trusted && req.connection_info().scheme() == "https"
}

fn client_ip(req: &HttpRequest, state: &AppState) -> Option<IpAddr> {
    crate::routes::request_client_ip(req, state)
}

fn html(status: StatusCode, markup: maud::Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

/// 303 to a path of this dashboard.
fn redirect(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .finish()
}

fn forbidden(message: &str) -> HttpResponse {
    html(
        StatusCode::FORBIDDEN,
        layout::bare("Forbidden", layout::notice_error(message)),
    )
}

/// An error page inside the layout (signed in).
fn error_page(ctx: &Ctx, status: StatusCode, message: &str) -> HttpResponse {
    html(
        status,
        layout::page(
            ctx,
            layout::Nav::None,
            status.canonical_reason().unwrap_or("Error"),
            layout::notice_error(message),
        ),
    )
}

/// An admin operation's failure as a page: the caller's mistake (400) or storage (503).
fn admin_error(ctx: &Ctx, error: crate::admin::AdminError) -> HttpResponse {
    match error {
        crate::admin::AdminError::Invalid(message) => {
            error_page(ctx, StatusCode::BAD_REQUEST, &message)
        }
        crate::admin::AdminError::Storage(cause) => {
            tracing::warn!(error = %cause, "Dashboard request failed: storage error.");
            error_page(
                ctx,
                StatusCode::SERVICE_UNAVAILABLE,
                "Storage is temporarily unavailable. Try again in a moment.",
            )
        }
    }
}

async fn not_found(SignedIn(ctx): SignedIn) -> HttpResponse {
    error_page(&ctx, StatusCode::NOT_FOUND, "No such page.")
}

async fn home(_: SignedIn) -> HttpResponse {
    redirect("/ui/events")
}

/// Where to go after signing in: a dashboard path only (no open redirect), in visible ASCII
/// (a `Location` header value; a query string arrives percent-encoded).
fn next_target(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with("/ui/")
                && !n.starts_with("/ui//")
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n
        }
        _ => "/ui/events",
    }
}

#[derive(serde::Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    ui: web::Data<UiState>,
) -> HttpResponse {
    let sessions = match enabled(&ui) {
        Ok(s) => s,
        Err(response) => return response,
    };
    let next = web::Query::<NextQuery>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.into_inner().next);
    if session_of(&req, sessions, now_secs(&state)).is_some() {
        return redirect(next_target(next.as_deref()));
    }
    html(
        StatusCode::OK,
        layout::login(next_target(next.as_deref()), None),
    )
}

/// `POST /ui/login` (`token`, `next`): the admin token, compared as digests in constant time,
/// rate-limited per client IP. A wrong token sets no cookie.
///
/// The sign-in form carries no CSRF token (there is no session yet); a forged sign-in would
/// need the admin token, and the `Origin` check still applies.
async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    ui: web::Data<UiState>,
    body: web::Bytes,
) -> HttpResponse {
    let sessions = match enabled(&ui) {
        Ok(s) => s,
        Err(response) => return response,
    };
    if !same_origin(&req) {
        return forbidden("Cross-origin form posts are refused.");
    }
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let next = next_target(field(&fields, "next")).to_owned();
    if ui.login_limiter.tracked_clients() > MAX_LOGIN_CLIENTS {
        ui.login_limiter.prune();
    }
    if let Err(wait) = ui.login_limiter.check(client_ip(&req, &state)) {
        let mut response = html(
            StatusCode::TOO_MANY_REQUESTS,
            layout::login(
                &next,
                Some("Too many sign-in attempts. Wait a little and try again."),
            ),
        );
        if let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let token = field(&fields, "token").unwrap_or_default();
    let admin = state.admin_token.as_ref();
    if !admin.is_some_and(|t| t.matches(token.as_bytes())) {
        tracing::info!(client_ip = ?client_ip(&req, &state), "Dashboard sign-in refused.");
        return html(
            StatusCode::UNAUTHORIZED,
            layout::login(&next, Some("That is not the admin token.")),
        );
    }
    let (_, cookie) = sessions.issue(now_secs(&state));
    let mut response = redirect(&next);
    if let Ok(value) =
        HeaderValue::from_str(&session::set_cookie(Some(&cookie), is_https(&req, &state)))
    {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    ui: web::Data<UiState>,
    Posted { ctx, .. }: Posted,
) -> HttpResponse {
    if let Some(sessions) = &ui.sessions {
        sessions.revoke(&ctx.session, now_secs(&state));
    }
    with_cookie(redirect("/ui/login"), None, &req, &state)
}

/// `response` with the session cookie set to `value`, or cleared.
fn with_cookie(
    mut response: HttpResponse,
    value: Option<&str>,
    req: &HttpRequest,
    state: &AppState,
) -> HttpResponse {
    let cookie = session::set_cookie(value, is_https(req, state));
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_tails_are_bounded() {
        let ui = UiState::new(None);
        let mut slots: Vec<TailSlot> = (0..MAX_TAILS).map(|_| ui.tail_slot().unwrap()).collect();
        assert!(ui.tail_slot().is_none());
        slots.pop();
        assert!(ui.tail_slot().is_some());
    }

    #[test]
    fn only_dashboard_paths_are_followed_after_sign_in() {
        assert_eq!(next_target(Some("/ui/events?x=1")), "/ui/events?x=1");
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/ui//evil.example",
            "/ui/\\evil",
            "/admin/events",
            "/ui/events\r\nSet-Cookie: x=1",
            "/ui/évents",
        ] {
            assert_eq!(next_target(Some(bad)), "/ui/events", "{bad}");
        }
        assert_eq!(next_target(None), "/ui/events");
    }
}
