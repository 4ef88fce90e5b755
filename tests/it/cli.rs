//! The command line as an operator uses it: the built binary, its output and exit code.

use crate::common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::process::BINARY;

fn run(args: &[&str], vars: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut child = Command::new(BINARY)
        .args(args)
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the binary");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("output")
}

const SECRETS: &[(&str, &str)] = &[
    (
        "CKO_SANDBOX_AUTHORIZATION_KEY",
        "auth-SECRET-one,auth-SECRET-two",
    ),
    ("CKO_SANDBOX_SIGNATURE_KEY", "sig-SECRET-three"),
    (
        "RELAY_DATABASE_URL",
        "postgres://relay:pw-SECRET-four@db.internal/relay",
    ),
    (
        "RELAY_ADMIN_TOKEN",
        "admin-SECRET-five-0123456789abcdef0123",
    ),
];

#[test]
fn check_config_prints_what_would_run_with_secrets_masked() {
    let out = run(&["check-config"], SECRETS, b"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("environment:          sandbox"), "{stdout}");
    assert!(stdout.contains("https://sbx.api.weaccelerate.com/webhooks/checkoutdotcom"));
    assert!(stdout.contains("db.internal"));
    assert!(stdout.contains("log format:           json\n"), "{stdout}");
    assert!(
        stdout.contains(
            "admin API:            on, 1 token (each checked: printable ASCII, at least 32 characters)"
        ),
        "{stdout}"
    );
    assert!(
        !stdout.contains("SECRET"),
        "a secret was printed:\n{stdout}"
    );

    assert!(
        stdout.contains("stored at rest:       IN CLEAR"),
        "{stdout}"
    );

    // A store key is shown by its id, never its value.
    let store_key = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let mut vars = SECRETS.to_vec();
    vars.push(("RELAY_STORE_KEY", store_key));
    let out = run(&["check-config"], &vars, b"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = accelerate_relay::seal::StoreKeys::parse(store_key)
        .expect("a key")
        .current()
        .to_string();
    assert!(
        stdout.contains(&format!(
            "stored at rest:       sealed (AES-256-GCM), RELAY_STORE_KEY <set: seals with {id}; opens {id}>"
        )),
        "{stdout}"
    );
    assert!(
        !stdout.contains(store_key) && !stdout.contains("0f1e2d3c"),
        "{stdout}"
    );

    // A password given as a query parameter is a password too.
    let url = "postgres://relay@db.internal/relay?sslmode=require&password=pw-SECRET-six&sslpassword=pw-SECRET-seven";
    let mut vars = SECRETS.to_vec();
    vars.retain(|(k, _)| *k != "RELAY_DATABASE_URL");
    vars.push(("RELAY_DATABASE_URL", url));
    let out = run(&["check-config"], &vars, b"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("sslmode=require"), "{stdout}");
    assert!(
        !stdout.contains("SECRET"),
        "a secret was printed:\n{stdout}"
    );
}

#[test]
fn check_config_fails_naming_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "CKO_SANDBOX_AUTHORIZATION_KEY"),
        (
            &[("CKO_SANDBOX_SIGNATURE_KEY", "sig-SECRET")],
            "CKO_SANDBOX_AUTHORIZATION_KEY",
        ),
        (
            &[
                ("CKO_SANDBOX_AUTHORIZATION_KEY", "a-SECRET"),
                ("CKO_SANDBOX_SIGNATURE_KEY", "s-SECRET"),
                ("RELAY_DELIVERY_TIMEOUT_MS", "soon"),
            ],
            "RELAY_DELIVERY_TIMEOUT_MS",
        ),
        // A weak admin token is refused by check-config as by start-up.
        (
            &[
                ("CKO_SANDBOX_AUTHORIZATION_KEY", "a-SECRET"),
                ("CKO_SANDBOX_SIGNATURE_KEY", "s-SECRET"),
                ("RELAY_ADMIN_TOKEN", "admin-SECRET"),
            ],
            "RELAY_ADMIN_TOKEN: the token is 12 characters, shorter than the 32 required",
        ),
        // Values that would overflow or exhaust something at run time.
        (
            &[
                ("CKO_SANDBOX_AUTHORIZATION_KEY", "a-SECRET"),
                ("CKO_SANDBOX_SIGNATURE_KEY", "s-SECRET"),
                ("RELAY_DELIVERY_CONCURRENCY", "1152921504606846976"),
            ],
            "RELAY_DELIVERY_CONCURRENCY",
        ),
        // An empty schedule is refused like empty event types.
        (
            &[
                ("CKO_SANDBOX_AUTHORIZATION_KEY", "a-SECRET"),
                ("CKO_SANDBOX_SIGNATURE_KEY", "s-SECRET"),
                ("RELAY_RETRY_SCHEDULE", ","),
            ],
            "RELAY_RETRY_SCHEDULE",
        ),
        (
            &[
                ("CKO_SANDBOX_AUTHORIZATION_KEY", "a-SECRET"),
                ("CKO_SANDBOX_SIGNATURE_KEY", "s-SECRET"),
                ("RELAY_EVENT_TYPES", ","),
            ],
            "RELAY_EVENT_TYPES",
        ),
        (
            &[
                ("CKO_SANDBOX_AUTHORIZATION_KEY", "a-SECRET"),
                ("CKO_SANDBOX_SIGNATURE_KEY", "s-SECRET"),
                ("RELAY_CONSOLE_SECURE_COOKIE", "no"),
            ],
            "RELAY_CONSOLE_SECURE_COOKIE",
        ),
    ];
    for (vars, name) in cases {
        for args in [&["check-config"][..], &["serve"], &[]] {
            let out = run(args, vars, b"");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} {vars:?} should fail");
            assert!(stderr.contains(name), "{stderr} should name {name}");
            assert!(!stderr.contains("SECRET"), "{stderr}");
        }
    }
}

#[test]
fn sign_prints_the_signature_checkout_would_send() {
    // RFC 4231 test case 2, from standard input.
    let out = run(
        &["sign", "--key", "Jefe"],
        &[],
        b"what do ya want for nothing?",
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    // From a file: the same bytes the relay checks.
    let path = format!(
        "{}/fixtures/payment_approved.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = run(&["sign", "--key", common::SANDBOX_SIG, &path], &[], b"");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        common::sign(
            common::SANDBOX_SIG,
            &common::fixture("payment_approved.json")
        )
    );
    let out = run(&["sign", "--key", "k", "/no/such/file"], &[], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/file"));
}

fn fixture_path(name: &str) -> String {
    format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `data.id` of fixtures/payment_approved.json.
const PAYMENT_ID: &str = "pay_mbabizu24mvu3mela5njyhpit4";

#[tokio::test]
async fn replay_sends_files_as_checkout_would_and_prints_each_answer() {
    let dir = tempfile::tempdir().expect("dir");
    let accelerate = common::MockAccelerate::start().await;
    let relay = common::process::RelayProcess::start(dir.path(), &accelerate.url(), &[]).await;
    let url = format!("{}/webhooks/checkoutdotcom/sandbox", relay.address);
    let files = [
        fixture_path("payment_approved.json"),
        fixture_path("payment_captured.json"),
    ];
    let mut args = vec![
        "replay",
        "--url",
        &url,
        "--authorization",
        common::SANDBOX_AUTH,
        "--signature-key",
        common::SANDBOX_SIG,
    ];
    args.extend(files.iter().map(String::as_str));
    let out = run(&args, &[], b"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].contains("payment_approved.json 200") && lines[0].contains("\"accepted\""));
    assert!(lines[1].contains("payment_captured.json 200") && lines[1].contains("\"ignored\""));
    let got = accelerate
        .wait_for(1, std::time::Duration::from_secs(10))
        .await;
    assert_eq!(
        got[0].body.as_ref(),
        common::fixture("payment_approved.json")
    );

    args[6] = "wrong-key";
    let out = run(&args[..8], &[], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("401"));
}

#[tokio::test]
async fn deliveries_commands_work_on_the_store_beside_a_running_relay() {
    let dir = tempfile::tempdir().expect("dir");
    let accelerate = common::MockAccelerate::start().await;
    accelerate.set_default(common::Reply::Status(500));
    let relay = common::process::RelayProcess::start(
        dir.path(),
        &accelerate.url(),
        &[("RELAY_RETRY_SCHEDULE", "50ms")],
    )
    .await;
    let out = run(
        &[
            "replay",
            "--url",
            &format!("{}/webhooks/checkoutdotcom/sandbox", relay.address),
            "--authorization",
            common::SANDBOX_AUTH,
            "--signature-key",
            common::SANDBOX_SIG,
            &fixture_path("payment_approved.json"),
        ],
        &[],
        b"",
    );
    assert!(out.status.success());
    let db = format!(
        "sqlite://{}",
        common::process::db_path(dir.path()).display()
    );
    let vars = [("RELAY_DATABASE_URL", db.as_str())];
    let dead = common::eventually(std::time::Duration::from_secs(10), || async {
        String::from_utf8_lossy(
            &run(&["deliveries", "list", "--status", "dead"], &vars, b"").stdout,
        )
        .contains("evt_az5sblvku4ge3dwpztvyizgcau")
    })
    .await;
    assert!(dead, "the delivery went dead");

    let list = run(
        &[
            "deliveries",
            "list",
            "--event-id",
            "evt_az5sblvku4ge3dwpztvyizgcau",
            "--json",
        ],
        &vars,
        b"",
    );
    let line: serde_json::Value = serde_json::from_slice(&list.stdout).expect("one JSON line");
    assert_eq!(line["status"], "dead");
    assert_eq!(line["attempts"], 2);
    let token = line["accelerate_token"].as_str().expect("token");
    assert!(
        !token.contains("7f3c2b1a9e8d"),
        "token must be redacted: {token}"
    );
    let id = line["id"].as_str().expect("id").to_owned();
    assert_eq!(line["payment_id"], PAYMENT_ID);
    // Support's question, by Checkout.com's payment id.
    let by_payment = run(
        &["deliveries", "list", "--payment-id", PAYMENT_ID, "--json"],
        &vars,
        b"",
    );
    let found: serde_json::Value =
        serde_json::from_slice(&by_payment.stdout).expect("one JSON line");
    assert_eq!(found["id"], id.as_str());
    let other = run(
        &["deliveries", "list", "--payment-id", "pay_other", "--json"],
        &vars,
        b"",
    );
    assert!(other.status.success() && other.stdout.is_empty());

    let show = run(&["deliveries", "show", &id, "--json"], &vars, b"");
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).expect("JSON");
    assert_eq!(shown["id"], id.as_str());
    // The attempt history: both attempts, with Accelerate's status.
    let history = shown["attempt_history"].as_array().expect("history");
    assert_eq!(history.len(), 2, "{shown}");
    for (i, attempt) in history.iter().enumerate() {
        assert_eq!(attempt["attempt"], i + 1);
        assert_eq!(attempt["http_status"], 500);
        assert_eq!(attempt["outcome"], "http_5xx");
    }
    // For people: one line for the delivery, one per attempt.
    let human =
        String::from_utf8_lossy(&run(&["deliveries", "show", &id], &vars, b"").stdout).into_owned();
    assert!(
        human.contains("dead") && human.contains("#1") && human.contains("#2"),
        "{human}"
    );
    assert!(
        !human.contains("7f3c2b1a9e8d"),
        "token must be redacted: {human}"
    );
    // The same filters as the admin API.
    let none = run(
        &[
            "deliveries",
            "list",
            "--environment",
            "production",
            "--json",
        ],
        &vars,
        b"",
    );
    assert!(none.status.success() && none.stdout.is_empty());
    let bad = run(
        &["deliveries", "list", "--received-after", "yesterday"],
        &vars,
        b"",
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("received_after"));
    assert!(!run(&["deliveries", "show", "dlv_999999"], &vars, b"")
        .status
        .success());
    assert!(!run(&["deliveries", "retry", "dlv_999999"], &vars, b"")
        .status
        .success());

    accelerate.set_default(common::Reply::Status(200));
    let out = run(&["deliveries", "retry-dead"], &vars, b"");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("1 dead"));
    let delivered = common::eventually(std::time::Duration::from_secs(10), || async {
        String::from_utf8_lossy(
            &run(&["deliveries", "list", "--status", "delivered"], &vars, b"").stdout,
        )
        .contains(&id)
    })
    .await;
    assert!(delivered, "delivered after retry-dead");
}

#[tokio::test]
async fn healthcheck_exits_0_only_when_the_relay_answers() {
    let dir = tempfile::tempdir().expect("dir");
    let accelerate = common::MockAccelerate::start().await;
    let relay = common::process::RelayProcess::start(dir.path(), &accelerate.url(), &[]).await;
    let port = relay.address.rsplit(':').next().expect("port");
    let listen = format!("0.0.0.0:{port}");
    assert!(run(&["healthcheck"], &[("RELAY_LISTEN", &listen)], b"")
        .status
        .success());
    let closed = common::process::ClosedPort::new();
    let nobody = format!("127.0.0.1:{}", closed.port());
    let out = run(&["healthcheck"], &[("RELAY_LISTEN", &nobody)], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not answer"));
}

/// A relay listening elsewhere than 127.0.0.1 is probed where it listens.
#[tokio::test]
async fn healthcheck_probes_the_address_the_relay_listens_on() {
    let accelerate = common::MockAccelerate::start().await;
    for host in ["127.0.0.2", "[::1]"] {
        let dir = tempfile::tempdir().expect("dir");
        let listen = format!("{host}:{}", common::process::free_port());
        let relay = common::process::RelayProcess::start(
            dir.path(),
            &accelerate.url(),
            &[("RELAY_LISTEN", &listen)],
        )
        .await;
        let out = run(&["healthcheck"], &[("RELAY_LISTEN", &listen)], b"");
        assert!(
            out.status.success(),
            "{listen}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(relay);
    }
    // `[::]` is probed on `[::1]`.
    let dir = tempfile::tempdir().expect("dir");
    let port = common::process::free_port();
    let relay = common::process::RelayProcess::start(
        dir.path(),
        &accelerate.url(),
        &[("RELAY_LISTEN", &format!("[::1]:{port}"))],
    )
    .await;
    let wildcard = format!("[::]:{port}");
    assert!(run(&["healthcheck"], &[("RELAY_LISTEN", &wildcard)], b"")
        .status
        .success());
    drop(relay);
}

/// The CLI works on an existing store only: pointed at the wrong place it
/// fails naming RELAY_DATABASE_URL and leaves nothing behind.
#[test]
fn deliveries_commands_never_create_a_store() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("relay.db");
    let url = format!("sqlite://{}", db.display());
    for args in [
        &["deliveries", "list"][..],
        &["deliveries", "retry-dead"],
        &["deliveries", "show", "dlv_1"],
    ] {
        let out = run(args, &[("RELAY_DATABASE_URL", &url)], b"");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains("RELAY_DATABASE_URL"), "{stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert!(left.is_empty(), "files were created: {left:?}");
    // Nor does it take an unrelated SQLite file for an empty store.
    rusqlite::Connection::open(&db)
        .and_then(|c| c.execute_batch("CREATE TABLE notes (x)"))
        .expect("another file");
    let out = run(
        &["deliveries", "list"],
        &[("RELAY_DATABASE_URL", &url)],
        b"",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a relay database"));
}
