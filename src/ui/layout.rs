//! The page skeleton: head, navigation, sign-out, notices.

use maud::{html, Markup, DOCTYPE};

use super::Ctx;

/// Which navigation entry is the current page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Events,
    DeadLetters,
    Instances,
    Rejected,
    None,
}

const ENTRIES: [(Nav, &str, &str); 4] = [
    (Nav::Events, "/ui/events", "Events"),
    (Nav::DeadLetters, "/ui/dead-letters", "Dead letters"),
    (Nav::Instances, "/ui/instances", "Instances & sinks"),
    (Nav::Rejected, "/ui/rejected", "Rejected"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="same-origin";
            title { (title) " · hookgate" }
            link rel="stylesheet" href="/ui/assets/ui.css";
            script src="/ui/assets/ui.js" defer {}
        }
    }
}

/// A signed-in page.
pub fn page(ctx: &Ctx, nav: Nav, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/ui/events" { "hookgate" }
                    nav {
                        @for (entry, href, label) in ENTRIES {
                            a href=(href) class=[(entry == nav).then_some("here")] { (label) }
                        }
                    }
                    form.inline method="post" action="/ui/logout" {
                        (csrf_field(ctx))
                        button type="submit" { "Sign out" }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page outside a session (sign-in, refusals).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top { a.brand href="/ui/events" { "hookgate" } }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// The hidden field every form of a session carries.
pub fn csrf_field(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.csrf); }
}

pub fn notice(message: &str) -> Markup {
    html! { div.notice role="status" { (message) } }
}

pub fn notice_error(message: &str) -> Markup {
    html! { div.notice.error role="alert" { (message) } }
}

/// The sign-in page; `error` after a refused attempt.
pub fn login(next: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body {
                div.login.card {
                    h1 { "hookgate" }
                    p.muted { "Sign in with the gateway's admin token (" code { "[admin] token" } ")." }
                    @if let Some(error) = error { (notice_error(error)) }
                    form method="post" action="/ui/login" {
                        input type="hidden" name="next" value=(next);
                        label for="token" { "Admin token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        button.primary #sign-in type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}
