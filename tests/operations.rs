//! Operations: `/metrics`, idle connections, `--version`, and what an operator relies on to
//! see the server's state.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Polls `series` until it equals `want`, or fails after a few seconds.
#[track_caller]
fn wait_for_metric(server: &TestServer, series: &str, want: f64) {
    wait_until_metric(server, series, &format!("{want}"), |got| got == want);
}

/// Waits until `series` satisfies `ok` (`wanted` says how, for the failure message).
#[track_caller]
fn wait_until_metric(server: &TestServer, series: &str, wanted: &str, ok: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let got = server.metric(series);
        if ok(got) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {got}, want {wanted}:\n{}",
            server.metrics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metrics_count_connections_messages_deliveries_and_refusals() {
    let server = TestServer::start_with(|c| {
        c.limits.max_message_bytes = 100;
        c.limits.send_rate = 1;
    });
    server.create_room("r1", "u1");
    server.add_member("r1", "u2");
    let mut u1 = server.ws("u1");
    let mut u2 = server.ws("u2");
    wait_for_metric(&server, "chat_engine_connections", 2.0);

    u1.send_msg("r1", "hello");
    u2.expect_push("message");
    u1.request_err(
        json!({"type": "send", "room_id": "r1", "text": "x".repeat(200)}),
        "too_large",
    );
    // The burst is 2: a message too large takes no token, so the next send has the second.
    u1.send_msg("r1", "two");
    u2.expect_push("message");
    u1.request_err(
        json!({"type": "send", "room_id": "r1", "text": "three"}),
        "rate_limited",
    );
    u1.send_text("not json");
    u1.recv_json();
    // A batch of frames is counted once its write is done, which can be just after the
    // client has read it.
    wait_until_metric(
        &server,
        "chat_engine_ws_frames_sent_total",
        "at least 6",
        |sent| sent >= 6.0,
    );

    let text = server.metrics();
    let value = |series: &str| metric_value(&text, series);
    assert_eq!(value("chat_engine_messages_stored_total"), 2.0, "{text}");
    // Each message reaches both members' one connection.
    assert_eq!(value("chat_engine_deliveries_total"), 4.0, "{text}");
    assert_eq!(
        value("chat_engine_errors_total{code=\"too_large\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        value("chat_engine_errors_total{code=\"rate_limited\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        value("chat_engine_errors_total{code=\"bad_request\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(value("chat_engine_ws_frames_received_total"), 5.0, "{text}");
    assert!(value("chat_engine_ws_frames_sent_total") >= 6.0, "{text}");
    assert!(value("chat_engine_commit_seconds_count") >= 1.0, "{text}");
    assert!(
        value("chat_engine_commit_batch_writes_sum") >= 1.0,
        "{text}"
    );
    assert_eq!(
        value(
            "chat_engine_http_requests_total{method=\"PUT\",route=\"/v1/rooms/:room_id\",status=\"201\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            "chat_engine_http_requests_total{method=\"PUT\",route=\"/v1/rooms/:room_id/members/:user_id\",status=\"201\"}"
        ),
        1.0,
        "{text}"
    );

    u2.close();
    wait_for_metric(&server, "chat_engine_connections", 1.0);
}

#[test]
fn silent_connections_are_dropped_and_answering_ones_kept() {
    let server = TestServer::start_with(|c| {
        c.limits.ping_interval_ms = 100;
        c.limits.idle_timeout_ms = 500;
    });
    server.create_room("r1", "u1");
    // `silent` never reads, so it never answers the server's pings.
    let _silent = server.ws("silent");
    let mut alive = server.ws("u1");
    wait_for_metric(&server, "chat_engine_connections", 2.0);
    let started = Instant::now();
    // Reading answers pings (tungstenite replies to them as it reads).
    while started.elapsed() < Duration::from_millis(1500) {
        alive.expect_silence(Duration::from_millis(100));
    }
    wait_for_metric(&server, "chat_engine_connections", 1.0);
    assert_eq!(
        server.metric("chat_engine_ws_closes_total{code=\"1000\"}"),
        1.0
    );
    alive.request_ok(json!({"type": "ping"}), "pong");
}

/// `chat-engine --version` (and `-V`) prints the package's name and version and exits 0.
#[test]
fn the_binary_says_its_version() {
    for flag in ["--version", "-V"] {
        let (status, stdout, _) = run_bin(&[flag], Duration::from_secs(15));
        assert!(status.success(), "{flag}");
        assert_eq!(
            stdout.trim(),
            format!("chat-engine {}", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
}

/// The classic Prometheus text format by default (what `curl` and most tools read), and
/// OpenMetrics for a scraper that asks for it, as Prometheus does.
#[test]
fn metrics_are_prometheus_text_and_openmetrics_when_asked_for() {
    let server = TestServer::start();
    server.create_room("r1", "u1");
    server.post_message("r1", json!({"text": "hi"}));
    let get = |accept: Option<&str>| {
        let mut request = ureq::get(&server.url("/metrics"));
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        let mut response = request.call().expect("GET /metrics");
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        (kind, response.body_mut().read_to_string().unwrap())
    };
    let (kind, text) = get(None);
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    assert!(
        text.contains("# TYPE chat_engine_messages_stored_total counter\n"),
        "{text}"
    );
    assert!(
        text.contains("\nchat_engine_messages_stored_total 1\n"),
        "{text}"
    );
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    let prometheus = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (kind, text) = get(Some(prometheus));
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert!(
        text.contains("# TYPE chat_engine_messages_stored counter\n"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}
