//! The operator's console in a real browser (headless Debian chromium over
//! WebDriver), against the real relay on port 0 with mock Accelerates, on
//! both stores; and its headers and cookie over plain HTTP.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::browser::Browser;
use common::operator;
use common::*;

const TOKEN: &str = "console-admin-token-0123456789abcdef0123";
const COOKIE_NAME: &str = accelerate_relay::http::console::COOKIE;
const WAIT: Duration = Duration::from_secs(15);

/// A relay with the console on its own admin listener, as deployed.
async fn console_app(backend: Backend) -> TestApp {
    TestApp::spawn_with(
        backend,
        &[
            ("RELAY_ADMIN_TOKEN", TOKEN),
            ("RELAY_ADMIN_LISTEN", "127.0.0.1:0"),
        ],
    )
    .await
}

fn console(app: &TestApp) -> String {
    format!(
        "{}/console",
        app.admin_address.as_deref().expect("an admin listener")
    )
}

/// Where screenshots go: `$CONSOLE_SCREENSHOTS` for the README (SQLite runs
/// only, so the two stores do not write the same file), else the target dir.
fn screenshots(backend: Backend, name: &str) -> (PathBuf, String) {
    match (std::env::var_os("CONSOLE_SCREENSHOTS"), backend) {
        (Some(dir), Backend::Sqlite) => (PathBuf::from(dir), name.to_owned()),
        _ => (
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console"),
            format!("{backend:?}-{name}").to_lowercase(),
        ),
    }
}

async fn sign_in(browser: &Browser, app: &TestApp) {
    browser.goto(&console(app)).await;
    assert_eq!(browser.path().await, "/console/sign-in");
    browser.fill("#token", TOKEN).await;
    browser.click("form button[type=submit]").await;
    let arrived = eventually(WAIT, || async { browser.path().await == "/console" }).await;
    assert!(
        arrived,
        "signed in, not on {} with {:?}",
        browser.path().await,
        browser.texts(".error").await
    );
    assert_eq!(browser.text("h1").await, "Overview");
}

/// Sends an approved event to `env` and returns its body.
async fn send(app: &TestApp, env: &str, id: &str) -> Vec<u8> {
    let body = approved_event(id);
    let (status, _) = app.send_json(env, body.clone()).await;
    assert_eq!(status, 200, "{id} accepted");
    body
}

async fn dead_event(app: &TestApp, id: &str) -> Vec<u8> {
    app.sandbox.set_default(Reply::Status(500));
    let body = send(app, "sandbox", id).await;
    assert!(app.reaches_status(id, "dead", WAIT).await, "{id} dead");
    app.sandbox.set_default(Reply::Status(200));
    body
}

/// Reloads until `css` reads `text`.
async fn page_shows(browser: &Browser, css: &str, text: &str) -> bool {
    eventually(WAIT, || async {
        browser.client.refresh().await.expect("reload");
        browser.texts(css).await.iter().any(|t| t == text)
    })
    .await
}

async fn sign_in_needs_the_admin_token(backend: Backend) {
    let app = console_app(backend).await;
    let Some(browser) = Browser::start().await else {
        return;
    };

    // No cookie: every page goes to the sign-in form.
    browser.goto(&format!("{}/deliveries", console(&app))).await;
    assert_eq!(browser.path().await, "/console/sign-in");

    browser
        .fill("#token", "console-admin-token-012345678")
        .await;
    browser.click("form button[type=submit]").await;
    assert_eq!(browser.path().await, "/console/sign-in");
    assert!(browser.text(".error").await.contains("not the admin token"));
    browser.goto(&console(&app)).await;
    assert_eq!(
        browser.path().await,
        "/console/sign-in",
        "a wrong token signs nobody in"
    );

    sign_in(&browser, &app).await;
    browser.goto(&format!("{}/deliveries", console(&app))).await;
    assert_eq!(browser.text("h1").await, "Deliveries");

    browser.click("form.sign-out button").await;
    assert_eq!(browser.path().await, "/console/sign-in");
    browser.goto(&format!("{}/deliveries", console(&app))).await;
    assert_eq!(browser.path().await, "/console/sign-in", "signed out");
    browser.close().await;
    app.stop().await;
}

async fn overview_counts_real_traffic_and_the_token_filter_finds_the_event(backend: Backend) {
    let app = console_app(backend).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    for id in ["evt_console_a1", "evt_console_a2", "evt_console_a3"] {
        send(&app, "sandbox", id).await;
    }
    send(&app, "production", "evt_console_p1").await;
    for id in [
        "evt_console_a1",
        "evt_console_a2",
        "evt_console_a3",
        "evt_console_p1",
    ] {
        assert!(
            app.reaches_status(id, "delivered", WAIT).await,
            "{id} delivered"
        );
    }
    dead_event(&app, "evt_console_d1").await;

    sign_in(&browser, &app).await;
    let count = |env: &str, what: &str| format!("#env-{env} [data-count={what}]");
    assert_eq!(browser.text(&count("sandbox", "delivered")).await, "3");
    assert_eq!(browser.text(&count("sandbox", "dead")).await, "1");
    assert_eq!(browser.text(&count("sandbox", "pending")).await, "0");
    assert_eq!(
        browser.text(&count("sandbox", "oldest-pending")).await,
        "none"
    );
    assert_eq!(browser.text(&count("production", "delivered")).await, "1");
    assert_eq!(browser.text(&count("production", "dead")).await, "0");
    // The chart's totals: 4 accepted; 3 delivered and 4 failed attempts (1 + 3 retries).
    let total = |env: &str, what: &str| format!("#env-{env} [data-total={what}]");
    assert_eq!(browser.text(&total("sandbox", "accepted")).await, "4");
    assert_eq!(browser.text(&total("sandbox", "delivered")).await, "3");
    assert_eq!(browser.text(&total("sandbox", "failed")).await, "4");
    assert_eq!(browser.count("#env-sandbox svg.chart .series").await, 3);
    let (dir, name) = screenshots(backend, "console-overview");
    browser.screenshot(&dir, &name).await;

    browser.goto(&format!("{}/deliveries", console(&app))).await;
    assert_eq!(browser.texts("td.event-id").await.len(), 5);
    let (dir, name) = screenshots(backend, "console-deliveries");
    browser.screenshot(&dir, &name).await;
    browser
        .fill("#accelerate_token", "tok_acc_evt_console_a2_0123456789")
        .await;
    browser.click("form.filters button[type=submit]").await;
    assert_eq!(browser.texts("td.event-id").await, vec!["evt_console_a2"]);
    let token = browser.text("td.token").await;
    assert!(
        !token.contains("console_a2"),
        "the token is redacted: {token}"
    );

    // Pages, newest first: two a page here, then "Older" from where it ended.
    browser
        .goto(&format!(
            "{}/deliveries?status=delivered&limit=2",
            console(&app)
        ))
        .await;
    let first = browser.texts("td.event-id").await;
    assert_eq!(first, vec!["evt_console_p1", "evt_console_a3"]);
    browser.click("a.older").await;
    assert_eq!(
        browser.texts("td.event-id").await,
        vec!["evt_console_a2", "evt_console_a1"]
    );
    let kept = browser
        .client
        .execute("return document.querySelector('#status').value", vec![])
        .await
        .expect("the form's status");
    assert_eq!(kept, serde_json::json!("delivered"), "the filter is kept");
    browser.close().await;
    app.stop().await;
}

async fn dead_delivery_is_retried_with_the_button(backend: Backend) {
    let app = console_app(backend).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let body = dead_event(&app, "evt_console_retry").await;
    let before = app.sandbox.received().len();

    sign_in(&browser, &app).await;
    browser
        .goto(&format!("{}/deliveries?status=dead", console(&app)))
        .await;
    assert_eq!(
        browser.texts("td.event-id").await,
        vec!["evt_console_retry"]
    );
    browser.click("table.deliveries td a").await;
    assert!(browser.path().await.starts_with("/console/deliveries/dlv_"));
    assert_eq!(browser.text("h1 .status").await, "dead");
    let attempts = browser.texts("ol.timeline li .answer").await;
    assert_eq!(
        attempts,
        vec!["HTTP 500"; 4],
        "one attempt and three retries"
    );

    browser.click("form.retry button").await;
    assert!(browser
        .text(".notice")
        .await
        .starts_with("Retried: the delivery"));
    assert!(
        page_shows(&browser, "h1 .status", "delivered").await,
        "delivered after the retry"
    );
    let last = browser.texts("ol.timeline li .answer").await;
    assert_eq!(
        last.first().map(String::as_str),
        Some("HTTP 200 · delivered"),
        "newest first"
    );
    assert_eq!(last.len(), 5);
    let (dir, name) = screenshots(backend, "console-delivery");
    browser.screenshot(&dir, &name).await;

    let received = app.sandbox.received();
    assert_eq!(received.len(), before + 1, "one more request");
    let delivered = received.last().expect("the retried delivery");
    assert_eq!(delivered.body.as_ref(), body.as_slice(), "byte for byte");
    assert_eq!(delivered.header_str("authorization"), Some(SANDBOX_AUTH));
    browser.close().await;
    app.stop().await;
}

async fn retry_all_dead_asks_first(backend: Backend) {
    let app = console_app(backend).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    dead_event(&app, "evt_console_dead1").await;
    dead_event(&app, "evt_console_dead2").await;

    sign_in(&browser, &app).await;
    browser.goto(&format!("{}/deliveries", console(&app))).await;
    browser.click("section.bulk a.button").await;
    assert_eq!(browser.path().await, "/console/retry-dead");
    assert_eq!(browser.text("[data-count=dead]").await, "2");
    assert_eq!(
        app.status_on_disk("evt_console_dead1").await.as_deref(),
        Some("dead"),
        "nothing yet"
    );

    browser.click("form.confirm button").await;
    assert!(browser
        .text(".notice")
        .await
        .starts_with("Retried: 2 dead deliveries"));
    // A notice comes from the relay, sealed to this session: one written
    // into a link (or taken from another session) is not shown.
    for forged in [
        "notice=retried-dead&retried=99999",
        "notice=retried-dead:99999.00112233445566778899aabbccddeeff",
        "notice=retried-dead:99999",
    ] {
        browser
            .goto(&format!(
                "{}/deliveries?status=pending&{forged}",
                console(&app)
            ))
            .await;
        let notices = browser.texts(".notice").await;
        assert!(
            notices.iter().all(|n| !n.contains("99999")),
            "{forged}: {notices:?}"
        );
    }
    for id in ["evt_console_dead1", "evt_console_dead2"] {
        assert!(
            app.reaches_status(id, "delivered", WAIT).await,
            "{id} delivered"
        );
    }
    browser.close().await;
    app.stop().await;
}

async fn a_form_without_its_csrf_token_is_refused(backend: Backend) {
    let app = console_app(backend).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    dead_event(&app, "evt_console_csrf").await;
    let sent_before = app.sandbox.received().len();

    sign_in(&browser, &app).await;
    browser
        .goto(&format!("{}/deliveries?status=dead", console(&app)))
        .await;
    browser.click("table.deliveries td a").await;
    // As a forged form would: the same POST without the session's token.
    browser
        .client
        .execute(
            "document.querySelector('form.retry input[name=csrf]').remove()",
            vec![],
        )
        .await
        .expect("the field is removed");
    browser.click("form.retry button").await;
    assert_eq!(browser.text("h1").await, "Refused");
    assert!(browser.text(".error").await.contains("reload the page"));

    // And one with a wrong token, from outside the browser with its cookie.
    let cookie = browser
        .client
        .get_named_cookie(accelerate_relay::http::console::COOKIE)
        .await
        .expect("the session cookie");
    let response = app
        .client
        .post(format!("{}/retry-dead", console(&app)))
        .header("cookie", format!("{}={}", cookie.name(), cookie.value()))
        .form(&[("csrf", "00")])
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 403);

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.status_on_disk("evt_console_csrf").await.as_deref(),
        Some("dead")
    );
    assert_eq!(
        app.sandbox.received().len(),
        sent_before,
        "nothing was sent"
    );
    browser.close().await;
    app.stop().await;
}

/// Console forms and pages take their own fields, each once: a repeated
/// environment (which of the two?) or an unknown field is 400 and changes
/// nothing, as on the admin API.
async fn console_fields_are_parsed_strictly(backend: Backend) {
    let app = console_app(backend).await;
    dead_event(&app, "evt_console_strict").await;
    let sent_before = app.sandbox.received().len();
    let base = app.admin_address.clone().expect("admin listener");
    let session = operator::sign_in(&base, TOKEN).await.expect("signed in");
    let csrf = session.csrf(&base).await;
    for form in [
        vec![
            ("csrf", csrf.as_str()),
            ("environment", "production"),
            ("environment", "sandbox"),
        ],
        vec![("csrf", csrf.as_str()), ("enviroment", "production")],
        vec![("csrf", csrf.as_str()), ("csrf", csrf.as_str())],
    ] {
        let (status, _) = session.post(&base, "/console/retry-dead", &form).await;
        assert_eq!(status, 400, "{form:?}");
    }
    for path in [
        "/console/retry-dead?environment=sandbox&environment=production",
        "/console/deliveries/dlv_1?notice=a&notice=b",
        "/console?window=hour&window=day",
        "/console/sessions?extra=1",
        "/console/replays?extra=1",
    ] {
        let (status, _, page) = session.get(&base, path).await;
        assert_eq!(status, 400, "{path}");
        assert!(
            page.contains("more than once") || page.contains("takes no"),
            "{path}: {page}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.status_on_disk("evt_console_strict").await.as_deref(),
        Some("dead")
    );
    assert_eq!(
        app.sandbox.received().len(),
        sent_before,
        "nothing was sent"
    );
    app.stop().await;
}

async fn an_event_id_with_markup_is_shown_as_text(backend: Backend) {
    let app = console_app(backend).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let id = "evt_<script>document.title='owned'</script><b>bold</b><img src=x onerror=alert(1)>";
    send(&app, "sandbox", id).await;

    sign_in(&browser, &app).await;
    browser.goto(&format!("{}/deliveries", console(&app))).await;
    assert_eq!(browser.texts("td.event-id").await, vec![id.to_owned()]);
    browser.click("table.deliveries td a").await;
    assert_eq!(browser.text("dd.event-id").await, id);
    let title = browser.client.title().await.expect("a title");
    assert!(!title.contains("owned"), "no script ran: {title}");
    assert_eq!(browser.count("dd.event-id b, dd.event-id img").await, 0);
    assert!(
        browser.client.get_alert_text().await.is_err(),
        "no alert opened"
    );
    browser.close().await;
    app.stop().await;
}

/// Headers and cookie as a client sees them, and where the console is served.
async fn console_headers_cookie_and_listeners(backend: Backend) {
    let app = console_app(backend).await;
    let page = app
        .client
        .get(format!("{}/sign-in", console(&app)))
        .send()
        .await
        .expect("the sign-in page");
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("ASCII");
    assert!(
        csp.starts_with("default-src 'none';") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");

    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client");
    let signed_in = no_redirects
        .post(format!("{}/sign-in", console(&app)))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .expect("signed in");
    assert_eq!(signed_in.status().as_u16(), 303);
    let cookie = signed_in.headers()["set-cookie"].to_str().expect("ASCII");
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Path=/console",
        "Max-Age=28800",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(
        !cookie.contains(TOKEN),
        "the cookie does not carry the token"
    );

    // Not on the webhook port when there is an admin listener; off without a token.
    let on_webhook_port = app
        .client
        .get(format!("{}/console", app.address))
        .send()
        .await
        .expect("answer");
    assert_eq!(on_webhook_port.status().as_u16(), 404);
    app.stop().await;
    let app = TestApp::spawn(backend).await;
    let off = app
        .client
        .get(format!("{}/console/sign-in", app.address))
        .send()
        .await
        .expect("answer");
    assert_eq!(off.status().as_u16(), 404);
    app.stop().await;

    // With the token and no admin listener: on the webhook port.
    let app = TestApp::spawn_with(backend, &[("RELAY_ADMIN_TOKEN", TOKEN)]).await;
    let sign_in = |host: &'static str| {
        let request = app.client.get(format!("{}/console/sign-in", app.address));
        async move {
            let answer = request.header("host", host).send().await.expect("answer");
            assert_eq!(answer.status().as_u16(), 200);
            answer.text().await.expect("the page")
        }
    };
    let local = sign_in("127.0.0.1:8080").await;
    assert!(!local.contains("plain HTTP"), "no warning on this machine");
    // From elsewhere over plain HTTP, the Secure cookie would be dropped: said first.
    let remote = sign_in("relay.example.com:8080").await;
    assert!(
        remote.contains("plain HTTP from relay.example.com:8080")
            && remote.contains("RELAY_CONSOLE_SECURE_COOKIE=false"),
        "{remote}"
    );
    app.stop().await;
}

/// The sessions page lists who is signed in and revokes another session;
/// signing out in the browser ends the cookie it had, not only its copy in
/// the browser.
async fn sessions_are_revoked_and_sign_out_ends_the_cookie(backend: Backend) {
    let app = console_app(backend).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let base = app.admin_address.clone().expect("an admin listener");
    sign_in(&browser, &app).await;
    let other = operator::sign_in(&base, TOKEN)
        .await
        .expect("a second sign-in");

    browser.click("nav a[href='/console/sessions']").await;
    assert_eq!(browser.text("h1").await, "Sessions");
    assert_eq!(browser.count("table.sessions tbody tr").await, 2);
    assert_eq!(browser.count("span.you").await, 1, "this session is marked");
    let (dir, name) = screenshots(backend, "console-sessions");
    browser.screenshot(&dir, &name).await;

    browser
        .click(&format!(
            "tr[data-session='{}'] form.revoke button",
            other.id()
        ))
        .await;
    assert_eq!(browser.path().await, "/console/sessions");
    let notice = browser.text("p.notice").await;
    assert!(
        notice.contains(&format!("session {}", other.id())),
        "{notice}"
    );
    assert_eq!(browser.count("table.sessions tbody tr").await, 1);
    assert!(!other.opens(&base).await, "the revoked cookie is refused");

    let cookie = browser
        .client
        .get_named_cookie(COOKIE_NAME)
        .await
        .expect("the browser holds the session cookie");
    let kept = operator::ConsoleSession {
        client: operator::no_redirects(),
        cookie: format!("{COOKIE_NAME}={}", cookie.value()),
    };
    assert!(kept.opens(&base).await);
    browser.click("form.sign-out button").await;
    assert_eq!(browser.path().await, "/console/sign-in");
    assert!(
        !kept.opens(&base).await,
        "the cookie a browser had is dead after sign-out"
    );
    browser.close().await;
    app.stop().await;
}

/// UTC as a `datetime-local` input holds it.
fn local_input(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()[..19].to_owned()
}

/// A replay is asked for with a form, confirmed on a page that shows how
/// many events it sends, and followed (and cancelled) on the replays page.
async fn a_replay_is_counted_confirmed_and_followed(backend: Backend) {
    // The attempt held in flight below outlasts the page's clicks.
    let app = TestApp::spawn_with(
        backend,
        &[
            ("RELAY_ADMIN_TOKEN", TOKEN),
            ("RELAY_ADMIN_LISTEN", "127.0.0.1:0"),
            ("RELAY_DELIVERY_TIMEOUT_MS", "15000"),
        ],
    )
    .await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let from = std::time::SystemTime::now() - Duration::from_secs(2);
    send(&app, "sandbox", "evt_console_rp1").await;
    send(&app, "sandbox", "evt_console_rp2").await;
    for id in ["evt_console_rp1", "evt_console_rp2"] {
        assert!(app.reaches_status(id, "delivered", WAIT).await);
    }
    dead_event(&app, "evt_console_rp3").await;
    send(&app, "production", "evt_console_rp_prod").await;
    let sent = app.sandbox.received().len();

    sign_in(&browser, &app).await;
    browser.click("nav a[href='/console/replays']").await;
    assert_eq!(browser.path().await, "/console/replays");
    assert_eq!(browser.text(".empty").await, "No replay yet.");
    browser
        .set_value("#received_after", &local_input(from))
        .await;
    let to = std::time::SystemTime::now() + Duration::from_secs(1);
    browser
        .set_value("#received_before", &local_input(to))
        .await;
    browser.tick("input[name=status][value=delivered]").await;
    browser.tick("input[name=status][value=dead]").await;
    browser.click("form.replay button").await;
    assert_eq!(browser.path().await, "/console/replays/confirm");
    assert_eq!(browser.text("[data-count=matched]").await, "3");
    let (dir, name) = screenshots(backend, "console-replay-confirm");
    browser.screenshot(&dir, &name).await;
    assert_eq!(
        app.sandbox.received().len(),
        sent,
        "nothing sent before the confirmation"
    );

    browser.click("form.confirm button").await;
    assert_eq!(browser.path().await, "/console/replays");
    let notice = browser.text(".notice").await;
    assert!(
        notice.starts_with("Replay rpl_1 started: 3 events"),
        "{notice}"
    );
    app.sandbox.wait_for(sent + 3, WAIT).await;
    assert!(page_shows(&browser, "tr[data-replay=rpl_1] .status", "done").await);
    assert_eq!(browser.text("tr[data-replay=rpl_1] .queued").await, "3");
    assert_eq!(
        app.production.received().len(),
        1,
        "production not replayed"
    );

    // A replay waiting on an attempt in flight is running: cancelled with its button.
    app.sandbox
        .set_default(Reply::Slow(Duration::from_secs(3), 200));
    send(&app, "sandbox", "evt_console_rp_slow").await;
    app.sandbox.wait_for(sent + 4, WAIT).await;
    browser.goto(&format!("{}/replays", console(&app))).await;
    browser
        .set_value("#received_after", &local_input(from))
        .await;
    let to = std::time::SystemTime::now() + Duration::from_secs(1);
    browser
        .set_value("#received_before", &local_input(to))
        .await;
    browser.tick("input[name=status][value=pending]").await;
    browser.click("form.replay button").await;
    assert_eq!(browser.text("form.confirm button").await, "Replay 1 event");
    browser.click("form.confirm button").await;
    assert!(page_shows(&browser, "tr[data-replay=rpl_2] .status", "running").await);
    let (dir, name) = screenshots(backend, "console-replays");
    browser.screenshot(&dir, &name).await;
    browser
        .click("tr[data-replay=rpl_2] form.revoke button")
        .await;
    let notice = browser.text(".notice").await;
    assert!(notice.starts_with("Replay rpl_2 cancelled"), "{notice}");
    assert_eq!(
        browser.text("tr[data-replay=rpl_2] .status").await,
        "cancelled"
    );

    // What is wrong is said on the form; a notice written into a link is not shown.
    let base = console(&app);
    browser
        .goto(&format!(
            "{base}/replays/confirm?environment=sandbox&received_after=2026-02-01T00:00&received_before=2026-01-01T00:00&status=dead"
        ))
        .await;
    assert!(browser.text(".error").await.contains("must be before"));
    browser
        .goto(&format!("{base}/replays/confirm?environment=sandbox&received_after=2026-01-01T00:00&received_before=2026-02-01T00:00&status=dead&status=dead"))
        .await;
    assert!(browser.text(".error").await.contains("more than once"));
    browser
        .goto(&format!("{base}/replays?notice=replay-started:rpl_9:99999"))
        .await;
    assert!(browser.texts(".notice").await.is_empty());
    browser.close().await;
    app.stop().await;
}

/// The overview's button pauses an environment for the whole fleet: a new
/// event waits unsent, the state and who paused it are shown, and Resume
/// sends it.
async fn an_environment_is_paused_and_resumed_with_its_button(backend: Backend) {
    let app = console_app(backend).await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    sign_in(&browser, &app).await;
    let state = "#env-sandbox .controls .state";
    assert!(browser.text(state).await.starts_with("Delivering"));
    browser.click("#env-sandbox .controls button.pause").await;
    assert!(page_shows(&browser, "#env-sandbox .controls strong", "Paused").await);
    assert!(browser.text(".notice").await.starts_with("Paused:"));
    let paused = browser.text(state).await;
    assert!(paused.contains(" by "), "who paused it: {paused}");
    assert!(browser
        .text("#env-production .controls .state")
        .await
        .starts_with("Delivering"));
    send(&app, "sandbox", "evt_console_held").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(app.sandbox.received().is_empty(), "sent while paused");
    browser.client.refresh().await.expect("reload");
    assert_eq!(browser.text("#env-sandbox [data-count=pending]").await, "1");
    let (dir, name) = screenshots(backend, "console-paused");
    browser.screenshot(&dir, &name).await;
    browser.click("#env-sandbox .controls button.resume").await;
    assert!(browser.text(".notice").await.starts_with("Resumed:"));
    app.sandbox.wait_for(1, WAIT).await;
    assert!(
        app.reaches_status("evt_console_held", "delivered", WAIT)
            .await
    );
    browser.close().await;
    app.stop().await;
}

on_both_stores!(
    an_environment_is_paused_and_resumed_with_its_button,
    a_replay_is_counted_confirmed_and_followed,
    console_fields_are_parsed_strictly,
    sign_in_needs_the_admin_token,
    sessions_are_revoked_and_sign_out_ends_the_cookie,
    overview_counts_real_traffic_and_the_token_filter_finds_the_event,
    dead_delivery_is_retried_with_the_button,
    retry_all_dead_asks_first,
    a_form_without_its_csrf_token_is_refused,
    an_event_id_with_markup_is_shown_as_text,
    console_headers_cookie_and_listeners,
);
