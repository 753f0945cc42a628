//! The page shell of both sides, and the pieces every page uses. maud
//! escapes every value it renders, so nothing a user or an upstream wrote
//! can become markup.

use maud::{DOCTYPE, Markup, html};

use super::session::Side;

pub const STYLE: &str = include_str!("assets/style.css");
pub const SCRIPT: &str = include_str!("assets/app.js");

/// The same head for every page: the embedded stylesheet and script only.
fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) }
            link rel="stylesheet" href="/assets/style.css";
            script src="/assets/app.js" defer {}
        }
    }
}

/// A page without navigation: sign-in and errors.
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(&format!("{title} · Tollgate")))
            body { main { (body) } }
        }
    }
}

/// A page of `side` for a signed-in person, with the side's navigation.
pub fn page(side: Side, current: &str, title: &str, who: &str, csrf: &str, body: Markup) -> Markup {
    let links: &[(&str, &str)] = match side {
        Side::Portal => &[("/portal", "APIs"), ("/portal/keys", "Keys"), ("/portal/usage", "Usage")],
        Side::Console => &[
            ("/console", "Overview"),
            ("/console/services", "Services"),
            ("/console/routes", "Routes"),
            ("/console/consumers", "Consumers"),
            ("/console/subscriptions", "Subscriptions"),
            ("/console/limits", "Limits"),
            ("/console/usage", "Usage"),
            ("/console/audit", "Audit"),
            ("/console/cluster", "Cluster"),
        ],
    };
    let brand = match side {
        Side::Portal => "Tollgate developer portal",
        Side::Console => "Tollgate console",
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(&format!("{title} · {brand}")))
            body {
                header {
                    a.brand href=(side.path()) { (brand) }
                    nav {
                        @for (href, label) in links {
                            @if *href == current { a href=(href) aria-current="page" { (label) } }
                            @else { a href=(href) { (label) } }
                        }
                    }
                    form.inline method="post" action={ (side.path()) "/signout" } {
                        (csrf_field(csrf))
                        span.muted { (who) " " }
                        button.secondary type="submit" id="signout" { "Sign out" }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// The hidden field every form of a signed-in page carries.
pub fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// A state as a coloured word.
pub fn badge(state: &str) -> Markup {
    html! { span class={ "badge " (state) } { (state) } }
}

/// Unix milliseconds as UTC, to the second; "—" for 0.
pub fn when(ms: i64) -> String {
    if ms <= 0 {
        return "—".into();
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.unsigned_abs());
    humantime::format_rfc3339_seconds(time).to_string().replace('T', " ").replace('Z', " UTC")
}

/// 10^-12 USD as dollars.
pub fn dollars(picodollars: u64) -> String {
    format!("${:.4}", picodollars as f64 / 1e12)
}
