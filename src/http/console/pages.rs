//! The console's pages as `maud` templates: every value is escaped by the
//! template, and nothing here holds a body, a header or a full token (the
//! store's `Delivery` and `AttemptView` carry none).

use maud::{html, Markup, DOCTYPE};

use super::chart;
use super::session::Session;
use crate::activity::Minute;
use crate::event::Environment;
use crate::store::{
    AttemptKind, Counts, Delivery, DeliveryDetail, Replay, ReplayRequest, ReplayState, Status,
    StoredSession, Timestamp, STEP_SIZE,
};

/// The page a link in the header is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Deliveries,
    Replays,
    Sessions,
    None,
}

pub fn layout(title: &str, session: Option<&Session>, nav: Nav, body: Markup) -> Markup {
    let current = |n: Nav| (n == nav).then_some("page");
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · accelerate-relay" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                header.top {
                    a.brand href="/console" { "accelerate-relay" }
                    @if let Some(session) = session {
                        nav {
                            a href="/console" aria-current=[current(Nav::Overview)] { "Overview" }
                            a href="/console/deliveries" aria-current=[current(Nav::Deliveries)] { "Deliveries" }
                            a href="/console/replays" aria-current=[current(Nav::Replays)] { "Replays" }
                            a href="/console/sessions" aria-current=[current(Nav::Sessions)] { "Sessions" }
                        }
                        form.sign-out method="post" action="/console/sign-out" {
                            (csrf(session))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
                footer { "accelerate-relay " (env!("CARGO_PKG_VERSION")) " · times in UTC" }
            }
        }
    }
}

/// `warning`: why the browser may not keep the session (see `cookie_warning`).
pub fn sign_in(error: Option<&str>, warning: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        Nav::None,
        html! {
            section.sign-in {
                h1 { "Sign in" }
                @if let Some(error) = error { p.error role="alert" { (error) } }
                @if let Some(warning) = warning { p.warning role="note" { (warning) } }
                form method="post" action="/console/sign-in" {
                    label for="token" { "Admin token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    button type="submit" { "Sign in" }
                }
                p.hint { "The value of " code { "RELAY_ADMIN_TOKEN" } ". A sign-in lasts 8 hours." }
            }
        },
    )
}

/// How far back the overview's chart goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Hour,
    Day,
}

impl Window {
    pub fn minutes(self) -> usize {
        match self {
            Window::Hour => 60,
            Window::Day => crate::activity::MINUTES,
        }
    }
}

/// One environment's part of the overview.
pub struct EnvironmentView {
    pub counts: Counts,
    pub minutes: Vec<Minute>,
    /// Its delivery controls (pause, breaker, rate).
    pub control: Option<crate::operations::EnvironmentView>,
}

pub fn overview(
    session: &Session,
    environments: &[EnvironmentView],
    window: Window,
    now: Timestamp,
    counting_since: Timestamp,
    notice: Option<&str>,
) -> Markup {
    let first = Timestamp(now.0 - 60_000 * (window.minutes() as i64 - 1));
    let middle = Timestamp((first.0 + now.0) / 2);
    let labels = [clock(first), clock(middle), "now".to_owned()];
    let span = match window {
        Window::Hour => "hour",
        Window::Day => "day",
    };
    let body = html! {
        h1 { "Overview" }
        @if let Some(notice) = notice { p.notice role="status" { (notice) } }
        p.window {
            "Chart: "
            a href="/console?window=hour" aria-current=[(window == Window::Hour).then_some("page")] { "last hour" }
            " · "
            a href="/console?window=day" aria-current=[(window == Window::Day).then_some("page")] { "last day" }
        }
        @for view in environments {
            @let env = view.counts.environment.as_str();
            @let c = &view.counts;
            section.environment id=(format!("env-{env}")) {
                h2 { (env) }
                @if let Some(control) = &view.control {
                    (controls(session, control))
                }
                div.cards {
                    a.card.pending href=(format!("/console/deliveries?environment={env}&status=pending")) {
                        span.count data-count="pending" { (c.pending) } span.label { "pending" }
                    }
                    a.card.delivered href=(format!("/console/deliveries?environment={env}&status=delivered")) {
                        span.count data-count="delivered" { (c.delivered) } span.label { "delivered, kept" }
                    }
                    a.card.dead href=(format!("/console/deliveries?environment={env}&status=dead")) {
                        span.count data-count="dead" { (c.dead) } span.label { "dead" }
                    }
                    div.card.oldest {
                        span.count data-count="oldest-pending" {
                            (c.oldest_pending.map_or_else(|| "none".to_owned(), |t| age(t, now)))
                        }
                        span.label { "oldest pending" }
                    }
                }
                @let caption = format!("{env}: accepted events, delivered and failed attempts per minute, last {span}");
                (chart::per_minute(&view.minutes, [&labels[0], &labels[1], &labels[2]], &caption))
                ul.legend {
                    @for (class, name, total) in totals(&view.minutes) {
                        li class=(class) { span.swatch {} (name) ": " strong data-total=(class) { (total) } }
                    }
                }
            }
        }
        p.hint {
            "Counts are the store's (every replica's events). The chart is this process's own, per minute, since "
            (clock(counting_since)) " UTC; the fleet's history is on the Grafana dashboard."
        }
    };
    layout("Overview", Some(session), Nav::Overview, body)
}

/// An environment's delivery state and the button that pauses or resumes it.
fn controls(session: &Session, c: &crate::operations::EnvironmentView) -> Markup {
    let env = c.environment;
    let rate = c.rate_per_second.map_or("unlimited".to_owned(), |r| {
        format!("at most {r} attempts a second")
    });
    html! {
        div.controls data-environment=(env) {
            @if c.paused {
                p.state.paused data-state="paused" {
                    strong { "Paused" }
                    " since " (c.paused_at.map_or("?".to_owned(), |t| t.to_string()))
                    @if let Some(by) = &c.paused_by { " by " (by) }
                    ". Events are accepted and stored; none is sent until resumed."
                }
            } @else if c.breaker == "open" {
                p.state.breaker data-state="breaker-open" {
                    strong { "Breaker open" }
                    " since " (c.breaker_opened_at.map_or("?".to_owned(), |t| t.to_string()))
                    ": Accelerate failed " (c.consecutive_failures) " attempts in a row. One probe goes out each interval; nothing turns dead meanwhile."
                }
            } @else {
                p.state.flowing data-state="flowing" {
                    strong { "Delivering" } ", " (rate) "."
                    @if let Some(until) = &c.held_until { " Held by Accelerate's Retry-After until " (until) "." }
                }
            }
            form method="post" action=(format!("/console/environments/{env}/{}", if c.paused { "resume" } else { "pause" })) {
                (csrf(session))
                @if c.paused {
                    button.resume type="submit" { "Resume deliveries" }
                } @else {
                    button.pause type="submit" { "Pause deliveries" }
                }
            }
        }
    }
}

/// What the list page was asked for, as the form shows it back.
#[derive(Default)]
pub struct ListForm {
    pub status: String,
    pub environment: String,
    pub accelerate_token: String,
    pub event_id: String,
    pub payment_id: String,
    pub received_after: String,
    pub received_before: String,
}

pub fn deliveries(
    session: &Session,
    form: &ListForm,
    found: Result<&[Delivery], &str>,
    notice: Option<&str>,
    older: Option<String>,
) -> Markup {
    let select = |name: &str, current: &str, options: &[&str]| {
        html! {
            select #(name) name=(name) {
                option value="" selected[current.is_empty()] { "any" }
                @for o in options { option value=(o) selected[*o == current] { (o) } }
            }
        }
    };
    let body = html! {
        h1 { "Deliveries" }
        @if let Some(notice) = notice { p.notice role="status" { (notice) } }
        form.filters method="get" action="/console/deliveries" {
            div { label for="status" { "Status" } (select("status", &form.status, &["pending", "delivered", "dead"])) }
            div { label for="environment" { "Environment" } (select("environment", &form.environment, &["sandbox", "production"])) }
            div { label for="accelerate_token" { "AccelerateToken" }
                input #accelerate_token name="accelerate_token" value=(form.accelerate_token) placeholder="the full token"; }
            div { label for="event_id" { "Event id" }
                input #event_id name="event_id" value=(form.event_id) placeholder="evt_…"; }
            div { label for="payment_id" { "Payment id" }
                input #payment_id name="payment_id" value=(form.payment_id) placeholder="pay_…"; }
            div { label for="received_after" { "Received from (UTC)" }
                input #received_after type="datetime-local" step="1" name="received_after" value=(form.received_after); }
            div { label for="received_before" { "Received before (UTC)" }
                input #received_before type="datetime-local" step="1" name="received_before" value=(form.received_before); }
            div.actions { button type="submit" { "Filter" } a href="/console/deliveries" { "Clear" } }
        }
        @match found {
            Err(message) => p.error role="alert" { (message) },
            Ok([]) => p.empty { "No delivery matches." },
            Ok(list) => {
                table.deliveries {
                    thead { tr { th { "Delivery" } th { "Received" } th { "Environment" } th { "Event" } th { "Type" } th { "AccelerateToken" } th { "Status" } th.num { "Attempts" } th { "Next attempt / last error" } } }
                    tbody {
                        @for d in list {
                            tr {
                                td { a href=(format!("/console/deliveries/{}", d.id)) { (d.id) } }
                                td.received { (short(d.received_at)) }
                                td { (d.environment) }
                                td.event-id { (d.event_id) }
                                td { (d.event_type) }
                                td.token { (d.accelerate_token) }
                                td { (status(d.status)) }
                                td.num { (d.attempts) }
                                td.why {
                                    @if let Some(next) = &d.next_attempt_at { "next " (short(*next)) }
                                    @if let Some(error) = &d.last_error { span.last-error { (error) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        nav.pages {
            @if let Some(older) = older { a.older href=(older) { "Older →" } }
        }
        section.bulk {
            h2 { "Dead deliveries" }
            p { "After an outage of Accelerate, send every dead delivery again. You confirm on the next page." }
            a.button.danger href=(match form.environment.as_str() {
                "" => "/console/retry-dead".to_owned(),
                env => format!("/console/retry-dead?environment={env}"),
            }) { "Retry all dead…" }
        }
    };
    layout("Deliveries", Some(session), Nav::Deliveries, body)
}

pub fn delivery(session: &Session, detail: &DeliveryDetail, notice: Option<&str>) -> Markup {
    let d = &detail.delivery;
    let body = html! {
        p.back { a href="/console/deliveries" { "← Deliveries" } }
        h1 { "Delivery " (d.id) " " (status(d.status)) }
        @if let Some(notice) = notice { p.notice role="status" { (notice) } }
        dl.fields {
            dt { "Environment" } dd { (d.environment) }
            dt { "Event id" } dd.event-id { (d.event_id) }
            dt { "Event type" } dd { (d.event_type) }
            @if let Some(payment) = &d.payment_id { dt { "Payment id" } dd.event-id { (payment) } }
            dt { "AccelerateToken" } dd.token { (d.accelerate_token) }
            dt { "Received" } dd { (short(d.received_at)) }
            dt { "Attempts" } dd { (d.attempts) }
            @if let Some(next) = &d.next_attempt_at { dt { "Next attempt" } dd { (short(*next)) } }
            @if let Some(at) = &d.delivered_at { dt { "Delivered" } dd { (short(*at)) } }
            @if let Some(error) = &d.last_error { dt { "Last error" } dd.last-error { (error) } }
        }
        form.retry method="post" action=(format!("/console/deliveries/{}/retry", d.id)) {
            (csrf(session))
            button type="submit" { "Retry now" }
            span.hint { "Pending and due now; Accelerate gets the same bytes and headers again." }
        }
        h2 { "Attempts" span.hint { " newest first" } }
        @if detail.attempt_history.is_empty() {
            p.empty { "No attempt made yet." }
        } @else {
            ol.timeline {
                @for a in detail.attempt_history.iter().rev() {
                    li class=(format!("attempt outcome-{}", if a.outcome == AttemptKind::Delivered { "delivered" } else { "failed" })) {
                        span.when { (short(a.started_at)) }
                        span.number { "attempt " (a.attempt) }
                        span.took { (a.duration_ms) " ms" }
                        span.answer {
                            @match (a.http_status, a.outcome.as_str()) {
                                (Some(code), "delivered") => { "HTTP " (code) " · delivered" }
                                (Some(code), _) => { "HTTP " (code) }
                                (None, outcome) => { (outcome.replace('_', " ")) }
                            }
                        }
                        @if let Some(message) = &a.message { span.message { (message) } }
                    }
                }
            }
        }
    };
    layout(
        &format!("Delivery {}", d.id),
        Some(session),
        Nav::Deliveries,
        body,
    )
}

pub fn confirm_retry_dead(
    session: &Session,
    environment: Option<Environment>,
    dead: u64,
) -> Markup {
    let scope = environment.map_or("all environments", Environment::as_str);
    let body = html! {
        h1 { "Retry all dead deliveries" }
        @if dead == 0 {
            p { "There is no dead delivery in " (scope) "." }
            p { a href="/console/deliveries" { "← Deliveries" } }
        } @else {
            p.confirm { strong data-count="dead" { (dead) } " dead " (plural(dead, "delivery", "deliveries")) " in " (scope)
                " become pending and are sent to Accelerate again now, with the same bytes and headers." }
            form.confirm method="post" action="/console/retry-dead" {
                (csrf(session))
                @if let Some(env) = environment { input type="hidden" name="environment" value=(env.as_str()); }
                button.danger type="submit" { "Retry " (dead) " dead " (plural(dead, "delivery", "deliveries")) }
                a href="/console/deliveries" { "Cancel" }
            }
        }
    };
    layout("Retry all dead", Some(session), Nav::Deliveries, body)
}

/// What the replay form holds, as the operator typed it.
#[derive(Default)]
pub struct ReplayForm {
    pub environment: String,
    pub received_after: String,
    pub received_before: String,
    pub statuses: Vec<String>,
}

/// The replays, newest first, and the form that starts one (confirmed on
/// the next page, which shows the count).
pub fn replays(
    session: &Session,
    form: &ReplayForm,
    found: &[Replay],
    retained_since: Timestamp,
    notice: Option<&str>,
    error: Option<&str>,
) -> Markup {
    let body = html! {
        h1 { "Replays" }
        @if let Some(notice) = notice { p.notice role="status" { (notice) } }
        p { "When Accelerate lost events or asks for them again: every event of one environment received in a time range "
            "is sent again, delivered ones included, with the same bytes, headers and delivery id and a new attempt number. "
            "A replay sends at most " (STEP_SIZE) " events a second for the whole fleet and never beside an attempt in flight." }
        p.hint { "Only events still kept can be replayed: delivered events received before "
            (short(retained_since)) " UTC were purged (RELAY_RETENTION_HOURS)." }
        @if let Some(error) = error { p.error role="alert" { (error) } }
        form.filters.replay method="get" action="/console/replays/confirm" {
            div { label for="environment" { "Environment" }
                select #environment name="environment" {
                    @for e in ["sandbox", "production"] { option value=(e) selected[form.environment == e] { (e) } }
                }
            }
            div { label for="received_after" { "Received from (UTC)" }
                input #received_after type="datetime-local" step="1" required name="received_after" value=(form.received_after); }
            div { label for="received_before" { "Received before (UTC)" }
                input #received_before type="datetime-local" step="1" required name="received_before" value=(form.received_before); }
            fieldset.statuses {
                legend { "Statuses" }
                @for s in ["delivered", "dead", "pending"] {
                    label { input type="checkbox" name="status" value=(s) checked[form.statuses.iter().any(|x| x == s)]; " " (s) }
                }
            }
            div.actions { button type="submit" { "Count and confirm…" } }
        }
        @if found.is_empty() {
            p.empty { "No replay yet." }
        } @else {
            table.deliveries.replays {
                thead { tr { th { "Replay" } th { "State" } th { "Environment" } th { "Received (UTC)" } th { "Statuses" } th.num { "Matched" } th.num { "Queued" } th { "Asked (UTC)" } th { "" } } }
                tbody {
                    @for r in found {
                        tr data-replay=(r.id) {
                            td.event-id { (r.id) }
                            td { span class=(format!("status replay-{}", r.state.as_str())) { (r.state.as_str()) } }
                            td { (r.request.environment) }
                            td.range { (short(r.request.received_after)) " →" br; (short(r.request.received_before)) }
                            td { (statuses(&r.request)) }
                            td.num.matched { (r.matched) }
                            td.num.queued { (r.queued) }
                            td.range { (short(r.created_at)) br; span.actor title=(r.actor) { "by " (actor(&r.actor)) } }
                            td {
                                @if r.state == ReplayState::Running {
                                    form.revoke method="post" action=(format!("/console/replays/{}/cancel", r.id)) {
                                        (csrf(session))
                                        button.danger type="submit" { "Cancel" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout("Replays", Some(session), Nav::Replays, body)
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// `api`, `cli`, or a console session's id cut to what tells sessions apart.
fn actor(actor: &str) -> String {
    match actor.get(..12) {
        Some(short) if actor.starts_with("ses_") && actor.len() > 12 => format!("{short}…"),
        _ => actor.to_owned(),
    }
}

fn statuses(request: &ReplayRequest) -> String {
    let names: Vec<&str> = request.statuses.iter().map(|s| s.as_str()).collect();
    names.join(", ")
}

/// The count a replay would send, and the button that starts it.
pub fn confirm_replay(session: &Session, request: &ReplayRequest, matched: u64) -> Markup {
    let after = request.received_after.to_string();
    let before = request.received_before.to_string();
    let body = html! {
        h1 { "Replay " (request.environment) " events" }
        @if matched == 0 {
            p { "No " (statuses(request)) " event of " (request.environment) " was received between "
                (short(request.received_after)) " and " (short(request.received_before)) " UTC (or it was purged). Nothing to replay." }
            p { a href="/console/replays" { "← Replays" } }
        } @else {
            p.confirm { strong data-count="matched" { (matched) } " " (statuses(request)) " " (plural(matched, "event", "events")) " of " (request.environment)
                " received between " (short(request.received_after)) " and " (short(request.received_before)) " UTC are sent to Accelerate again, "
                "with the same bytes and headers, at most " (STEP_SIZE) " a second." }
            form.confirm method="post" action="/console/replays" {
                (csrf(session))
                input type="hidden" name="environment" value=(request.environment.as_str());
                input type="hidden" name="received_after" value=(after);
                input type="hidden" name="received_before" value=(before);
                @for s in &request.statuses { input type="hidden" name="status" value=(s.as_str()); }
                button.danger type="submit" { "Replay " (matched) " " (plural(matched, "event", "events")) }
                a href="/console/replays" { "Cancel" }
            }
        }
    };
    layout("Confirm replay", Some(session), Nav::Replays, body)
}

/// The console sessions signed in now, each with a button that ends it.
pub fn sessions(session: &Session, active: &[StoredSession], notice: Option<&str>) -> Markup {
    let body = html! {
        h1 { "Sessions" }
        @if let Some(notice) = notice { p.notice role="status" { (notice) } }
        p { "Console sign-ins that have not ended. Revoking one signs it out on every replica at its next request. "
            "The admin API's bearer tokens are not sessions: rotate " code { "RELAY_ADMIN_TOKEN" } " to end those." }
        table.sessions {
            thead { tr { th { "Session" } th { "Signed in (UTC)" } th { "Expires (UTC)" } th { "From" } th { "" } } }
            tbody {
                @for s in active {
                    tr data-session=(s.id) {
                        td.session-id { (s.id) @if s.id == session.id() { " " span.you { "(this session)" } } }
                        td { (short(s.created_at)) }
                        td { (short(s.expires_at)) }
                        td { (s.peer.as_deref().unwrap_or("unknown")) }
                        td {
                            form.revoke method="post" action=(format!("/console/sessions/{}/revoke", s.id)) {
                                (csrf(session))
                                button.danger type="submit" { @if s.id == session.id() { "Sign out" } @else { "Revoke" } }
                            }
                        }
                    }
                }
            }
        }
    };
    layout("Sessions", Some(session), Nav::Sessions, body)
}

/// A page for an error: what is wrong and what to do.
pub fn problem(session: Option<&Session>, title: &str, message: &str) -> Markup {
    let body = html! {
        h1 { (title) }
        p.error role="alert" { (message) }
        p { a href="/console" { "Back to the overview" } }
    };
    layout(title, session, Nav::None, body)
}

fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf()); }
}

/// Status by colour and by word, so it reads without colour too.
fn status(status: Status) -> Markup {
    html! { span class=(format!("status status-{status}")) { (status) } }
}

fn totals(minutes: &[Minute]) -> [(&'static str, &'static str, u64); 3] {
    let sum = |f: fn(&Minute) -> u64| minutes.iter().map(f).sum();
    [
        ("accepted", "accepted", sum(|m| m.accepted)),
        ("delivered", "delivered", sum(|m| m.delivered)),
        ("failed", "failed attempts", sum(|m| m.failed)),
    ]
}

/// `2026-11-25T18:00:00.123Z` as `2026-11-25 18:00:00`.
fn short(at: Timestamp) -> String {
    let rfc3339 = at.to_string();
    rfc3339.get(..19).unwrap_or(&rfc3339).replacen('T', " ", 1)
}

/// `HH:MM` in UTC.
fn clock(at: Timestamp) -> String {
    at.to_string().get(11..16).unwrap_or_default().to_owned()
}

/// Whole seconds, as `1h 2m 3s`.
fn age(since: Timestamp, now: Timestamp) -> String {
    let secs = since.until(now).as_secs();
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}
