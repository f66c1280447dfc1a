//! API docs and the demo: `/openapi.json` against the router and a real validator, Swagger
//! UI served with no network, and the `/demo` page driven in headless Chromium.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use common::{agent, node_path, tool_available as available, TestServer};

/// Every route the server has, as the OpenAPI document spells it.
const ROUTES: [(&str, &str); 16] = [
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/ws"),
    ("put", "/v1/rooms/{room_id}"),
    ("get", "/v1/rooms/{room_id}"),
    ("delete", "/v1/rooms/{room_id}"),
    ("put", "/v1/rooms/{room_id}/members/{user_id}"),
    ("delete", "/v1/rooms/{room_id}/members/{user_id}"),
    ("post", "/v1/rooms/{room_id}/messages"),
    ("get", "/v1/rooms/{room_id}/messages"),
    ("get", "/v1/rooms/{room_id}/messages/{seq}"),
    ("patch", "/v1/rooms/{room_id}/messages/{seq}"),
    ("delete", "/v1/rooms/{room_id}/messages/{seq}"),
    ("post", "/v1/admin/backup"),
    ("post", "/v1/users/{user_id}/disconnect"),
];

fn openapi(server: &TestServer) -> Value {
    let (status, document) = server.rest("GET", "/openapi.json", None);
    assert_eq!(status, 200);
    document
}

#[test]
fn openapi_documents_every_route_the_router_serves() {
    let server = TestServer::start();
    let document = openapi(&server);
    let documented: BTreeSet<(String, String)> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);
    // Each documented route reaches a handler: the router's own 404 has no body, and a
    // handler's 404 is the protocol's error body.
    for (method, path) in &documented {
        let concrete = path
            .replace("{room_id}", "no-such-room")
            .replace("{user_id}", "someone")
            .replace("{seq}", "1");
        let (status, body) = server.rest(&method.to_uppercase(), &concrete, Some(json!({})));
        let routed = status != 405 && (status != 404 || body["code"] == "not_found");
        assert!(routed, "{method} {concrete}: {status} {body}");
    }
    // The error body, the security scheme and the room schema come from the code's types.
    let schemas = &document["components"]["schemas"];
    assert!(schemas["ErrorBody"]["properties"]["code"].is_object());
    assert_eq!(
        schemas["RoomView"]["properties"]["members"]["type"],
        "array"
    );
    assert_eq!(schemas["Id"]["pattern"], "^[A-Za-z0-9._:@-]+$");
    assert_eq!(
        document["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    let put_room = &document["paths"]["/v1/rooms/{room_id}"]["put"];
    assert_eq!(put_room["security"], json!([{"api_key": []}]));
    for status in ["200", "201", "409"] {
        assert!(put_room["responses"][status].is_object(), "{status}");
    }
}

/// A response header's value, or "" when it has none.
fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The methods `OPTIONS` says a path allows.
fn allowed(server: &TestServer, method: &str, path: &str) -> (u16, BTreeSet<String>) {
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(server.url(path))
        .body(())
        .unwrap();
    let response = agent()
        .run(request)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let allow = header(&response, "allow");
    let methods = allow
        .split(',')
        .map(|m| m.trim().to_lowercase())
        .filter(|m| !m.is_empty())
        .collect();
    (response.status().as_u16(), methods)
}

/// RFC 9110: a method a path lacks is answered 405 with `Allow`, OPTIONS 204 with it, and
/// `Allow` names what the OpenAPI document names for the path (with HEAD for GET).
#[test]
fn every_path_says_which_methods_it_allows() {
    let server = TestServer::start();
    let document = openapi(&server);
    for (path, item) in document["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{room_id}", "r")
            .replace("{user_id}", "u")
            .replace("{seq}", "1");
        let mut documented: BTreeSet<String> = item.as_object().unwrap().keys().cloned().collect();
        if documented.contains("get") {
            documented.insert("head".into());
        }
        documented.insert("options".into());
        assert_eq!(
            allowed(&server, "OPTIONS", &concrete),
            (204, documented.clone()),
            "OPTIONS {concrete}"
        );
        for method in ["GET", "PUT", "POST", "PATCH", "DELETE", "TRACE"] {
            if !documented.contains(&method.to_lowercase()) {
                assert_eq!(
                    allowed(&server, method, &concrete),
                    (405, documented.clone()),
                    "{method} {concrete}"
                );
            }
        }
    }
    // Paths outside the document answer the same way, and HEAD is GET without the body.
    let get_only: BTreeSet<String> = ["get", "head", "options"].map(String::from).into();
    assert_eq!(
        allowed(&server, "DELETE", "/openapi.json"),
        (405, get_only.clone())
    );
    assert_eq!(allowed(&server, "POST", "/asyncapi.json"), (405, get_only));
    let refused = ureq::http::Request::builder()
        .method("DELETE")
        .uri(server.url("/openapi.json"))
        .body(())
        .unwrap();
    let mut refused = agent().run(refused).unwrap();
    let body: Value = serde_json::from_str(&refused.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(
        body["code"], "bad_request",
        "a 405 has the error body: {body}"
    );
    assert_eq!(allowed(&server, "HEAD", "/healthz").0, 200);
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/v2/rooms"),
        ("POST", "/v1/rooms/r/extra"),
    ] {
        let (status, body) = server.rest(method, path, None);
        assert_eq!(
            (status, body["code"].clone()),
            (404, json!("not_found")),
            "{method} {path}"
        );
    }
}

#[test]
fn openapi_points_at_the_asyncapi_document_and_has_the_crates_license() {
    let server = TestServer::start();
    let document = openapi(&server);
    let info = &document["info"];
    assert_eq!(info["license"]["name"], env!("CARGO_PKG_LICENSE"));
    assert_eq!(info["license"]["identifier"], env!("CARGO_PKG_LICENSE"));
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    // Swagger UI (/docs) shows the description, with its link.
    let description = info["description"].as_str().unwrap();
    assert!(
        description.contains("[/asyncapi.json](/asyncapi.json)"),
        "{description}"
    );
    assert_eq!(document["externalDocs"]["url"], "/asyncapi.json");
    let (status, asyncapi) = server.rest("GET", "/asyncapi.json", None);
    assert_eq!(status, 200);
    assert_eq!(
        asyncapi["info"]["license"]["name"],
        env!("CARGO_PKG_LICENSE")
    );
    assert_eq!(
        asyncapi["servers"]["chat-engine"]["host"],
        server.addr.to_string()
    );
}

#[test]
fn openapi_passes_a_real_validator() {
    let mut probe = Command::new("openapi-spec-validator");
    probe.arg("--help");
    if !available(
        "openapi_passes_a_real_validator",
        "openapi-spec-validator",
        probe,
    ) {
        return;
    }
    let server = TestServer::start();
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openapi.json");
    std::fs::write(&path, openapi(&server).to_string()).unwrap();
    let out = Command::new("openapi-spec-validator")
        .arg(&path)
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn swagger_ui_is_served_by_the_binary() {
    let server = TestServer::start();
    let get = |path: &str| {
        let mut response = agent()
            .get(server.url(path))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let content_type = header(&response, "content-type");
        let body = response.body_mut().read_to_string().unwrap_or_default();
        (response.status().as_u16(), content_type, body)
    };
    // /docs is the page itself (no redirect), which loads only its own files.
    let direct =
        ureq::Agent::new_with_config(ureq::Agent::config_builder().max_redirects(0).build());
    let response = direct.get(server.url("/docs")).call().expect("GET /docs");
    assert_eq!(response.status().as_u16(), 200, "not a redirect");
    let (status, content_type, page) = get("/docs");
    assert_eq!(status, 200);
    assert!(page.contains("<base href=\"/docs/\">"), "{page}");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(page.contains("swagger-ui-bundle.js"), "{page}");
    assert!(
        !page.contains("https://") && !page.contains("http://"),
        "no CDN: {page}"
    );
    for (file, kind) in [
        ("swagger-ui-bundle.js", "javascript"),
        ("swagger-ui.css", "css"),
    ] {
        let (status, content_type, body) = get(&format!("/docs/{file}"));
        assert_eq!(status, 200, "{file}");
        assert!(content_type.contains(kind), "{file}: {content_type}");
        assert!(body.len() > 10_000, "{file} is the real asset");
    }
    let (_, _, initializer) = get("/docs/swagger-initializer.js");
    assert!(initializer.contains("\"/openapi.json\""), "{initializer}");
}

#[test]
fn the_demo_mints_tokens_only_in_development_mode() {
    let server = TestServer::start();
    let (status, config) = server.rest("GET", "/demo/config", None);
    assert_eq!((status, &config), (200, &json!({"dev_mode": false})));
    let (status, body) = server.rest("POST", "/demo/token", Some(json!({"user_id": "alice"})));
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));

    let dev = TestServer::start_with(|config| {
        config.auth.jwt_secret = chat_engine::config::DEV_JWT_SECRET.to_owned();
    });
    let (status, config) = dev.rest("GET", "/demo/config", None);
    assert_eq!((status, &config), (200, &json!({"dev_mode": true})));
    let (status, body) = dev.rest("POST", "/demo/token", Some(json!({"user_id": "bad id"})));
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")));
    let (status, body) = dev.rest("POST", "/demo/token", Some(json!({"user_id": "alice"})));
    assert_eq!(status, 200);
    let token = body["token"].as_str().unwrap();
    let mut alice =
        common::Client::connect(dev.addr, &dev.ws_url(Some(token)), None).expect("the token works");
    assert!(alice.rooms().is_empty());
}

/// Whether headless Chromium and playwright-core are here to drive the demo page with (a
/// test without them says so and passes, unless CI requires them).
fn browser_available(test: &str) -> bool {
    let mut chromium = Command::new("/usr/bin/chromium");
    chromium.arg("--version");
    let mut playwright = Command::new("node");
    playwright
        .args(["-e", "require('playwright-core')"])
        .env("NODE_PATH", node_path());
    available(test, "chromium", chromium)
        && available(test, "node with playwright-core", playwright)
}

/// A server on the development secret, so the demo page mints its own tokens.
fn demo_server() -> TestServer {
    demo_server_with(|_| {})
}

fn demo_server_with(configure: impl FnOnce(&mut chat_engine::Config)) -> TestServer {
    TestServer::start_with(|config| {
        config.auth.jwt_secret = chat_engine::config::DEV_JWT_SECRET.to_owned();
        configure(config);
    })
}

/// Runs `tests/e2e/<script>` with node and `args`, asserting it succeeds.
fn run_browser_script(script: &str, args: &[&std::ffi::OsStr]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e")
        .join(script);
    let out = Command::new("node")
        .arg(script)
        .args(args)
        .env("NODE_PATH", node_path())
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_demo_page_chats_between_two_browser_windows() {
    if !browser_available("the_demo_page_chats_between_two_browser_windows") {
        return;
    }
    let server = demo_server();
    server.create_room("route-1", "alice");
    server.add_member("route-1", "bob");
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-e2e.png");
    let _ = std::fs::remove_file(&screenshot);
    let base = format!("http://{}", server.addr);
    run_browser_script("demo.cjs", &[base.as_ref(), screenshot.as_ref()]);
    assert!(screenshot.exists(), "screenshot saved");
    // What the browsers did went through the server: the history has the four messages in
    // their current state, and the changes as messages of their own.
    let (_, page) = server.rest("GET", "/v1/rooms/route-1/messages", None);
    let kind = |m: &Value| m["kind"].as_str().unwrap_or("text").to_owned();
    let (texts, changes): (Vec<&Value>, Vec<&Value>) = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .partition(|m| kind(m) == "text");
    let text_of = |m: &&Value| m["text"].as_str().unwrap().to_owned();
    assert_eq!(
        texts.iter().map(text_of).collect::<Vec<_>>(),
        ["", "hello bob, how are you?", "hi alice", "one more"]
    );
    assert_eq!(texts[0]["deleted"], true);
    assert!(texts[1]["edited_ts"].is_u64(), "{}", texts[1]);
    assert_eq!(texts[1]["reactions"], json!({"👍": ["bob"]}));
    assert_eq!(
        changes.iter().map(|m| kind(m)).collect::<Vec<_>>(),
        ["edit", "reaction", "reaction", "reaction", "delete"]
    );
}

/// The demo page caches every room, resumes with it on every connection and reconnects by
/// itself: after dropped connections it shows exactly the server's history, none twice, none
/// missing (tests/e2e/demo-resume.cjs).
#[test]
fn the_demo_page_resumes_after_a_dropped_connection() {
    if !browser_available("the_demo_page_resumes_after_a_dropped_connection") {
        return;
    }
    let server = demo_server();
    for room in ["route-1", "route-2", "route-old"] {
        server.create_room(room, "alice");
    }
    let base = format!("http://{}", server.addr);
    run_browser_script("demo-resume.cjs", &[base.as_ref(), server.api_key.as_ref()]);
}

/// In development mode the demo page answers `token_expiring` with a fresh token in an
/// `auth` frame, and its connection outlives the old token (tests/e2e/demo-refresh.cjs).
#[test]
fn the_demo_page_refreshes_its_token_before_it_expires() {
    if !browser_available("the_demo_page_refreshes_its_token_before_it_expires") {
        return;
    }
    let server = demo_server_with(|c| c.auth.leeway_s = 1);
    server.create_room("route-9", "carol");
    let base = format!("http://{}", server.addr);
    run_browser_script(
        "demo-refresh.cjs",
        &[base.as_ref(), server.api_key.as_ref()],
    );
    assert!(server
        .metrics()
        .lines()
        .all(|line| !line.starts_with("chat_engine_ws_closes_total{code=\"4001\"}")));
}

/// The protocol document, whose WebSocket frames the server's must match.
const PROTOCOL_DOC: &str = include_str!("../docs/protocol.md");

/// The frames of the code block that follows the line `heading` in docs/protocol.md, one
/// JSON frame per line.
fn protocol_frames(heading: &str) -> Vec<Value> {
    let line = format!("\n{heading}\n");
    let mut found = PROTOCOL_DOC.match_indices(line.as_str());
    let (start, _) = found
        .next()
        .unwrap_or_else(|| panic!("docs/protocol.md has no line {heading:?}"));
    assert!(
        found.next().is_none(),
        "docs/protocol.md has the line {heading:?} more than once"
    );
    let block = PROTOCOL_DOC[start..]
        .split("```")
        .nth(1)
        .expect("a code block after the heading");
    block
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect()
}

/// The field names of a frame, and of the objects inside it, as `path.key`.
fn shape(value: &Value, path: &str, into: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let here = format!("{path}.{key}");
                // `data` is the client's own object; `reactions` is keyed by the reactions.
                if key != "data" && key != "reactions" {
                    shape(inner, &here, into);
                }
                into.insert(here);
            }
        }
        Value::Array(items) => {
            for item in items {
                shape(item, &format!("{path}[]"), into);
            }
        }
        _ => {}
    }
}

/// What a frame is an example of: its `type`, and for a `message` push the message's
/// `kind` (and whether it takes a reaction away), since each kind has its own example.
fn frame_kind(frame: &Value) -> String {
    let kind = frame["type"].as_str().unwrap_or_default();
    if kind != "message" {
        return kind.to_owned();
    }
    let message = &frame["message"];
    let mut kind = format!("message {}", message["kind"].as_str().unwrap_or_default());
    if message["removed"] == true {
        kind.push_str(" removed");
    }
    kind
}

/// The next `message` push of `kind` (as [`frame_kind`] names it), skipping the pushes of
/// other messages before it.
#[track_caller]
fn message_push(client: &mut common::Client, kind: &str) -> Value {
    loop {
        let push = client.expect_push("message");
        if frame_kind(&push) == kind {
            return push;
        }
    }
}

#[test]
fn the_protocol_docs_websocket_frames_are_the_servers() {
    for frame in protocol_frames("### Client to server") {
        let text = frame.to_string();
        assert!(
            chat_engine::protocol::parse_request(&text).is_ok(),
            "docs/protocol.md's client frame is refused: {text}"
        );
    }
    // Make the server produce every kind of frame, and compare shapes with the document's.
    let server = TestServer::start_with(|config| config.limits.send_rate = 2);
    server.create_room("route-42", "alice");
    server.add_member("route-42", "bob");
    let mut alice = server.ws("alice");
    let mut bob = server.ws("bob");
    let target = alice.send_msg("route-42", "Pickup in 5")["seq"].clone();
    let change = |mut frame: Value| {
        frame["room_id"] = json!("route-42");
        frame["seq"] = target.clone();
        frame
    };
    // Three sends or changes per user before alice's flood: within the burst of
    // 2 * send_rate (changes count as sends).
    let mut real = vec![
        alice.request(json!({"type": "rooms"})),
        bob.request(json!({"type": "send", "room_id": "route-42", "text": "On my way", "client_msg_id": "b7f3c2"})),
        // Before the direct room: resume's maps are keyed by room id.
        bob.request(json!({"type": "resume", "rooms": {"route-9": {"seq": 4, "epoch": "e"}}})),
        alice.request_ok(change(json!({"type": "edit", "text": "Pickup in 10"})), "sent"),
        bob.request_ok(change(json!({"type": "react", "reaction": "👍"})), "sent"),
        // The room's history now holds a target in its changed state, and the changes.
        alice.request(json!({"type": "sync", "room_id": "route-42"})),
        bob.request_ok(
            change(json!({"type": "react", "reaction": "👍", "removed": true})),
            "sent",
        ),
        alice.request_ok(change(json!({"type": "delete"})), "sent"),
        bob.request(json!({"type": "direct", "user_id": "alice"})),
        bob.request(json!({"type": "read", "room_id": "route-42", "seq": 2})),
        bob.request(json!({"type": "ping"})),
    ];
    bob.send_json(&json!({"type": "typing", "room_id": "route-42"}));
    real.push(alice.expect_push("typing"));
    // A room's pushes arrive in seq order: the message, then the changes made to it.
    for kind in [
        "message text",
        "message edit",
        "message reaction",
        "message reaction removed",
        "message delete",
    ] {
        real.push(message_push(&mut alice, kind));
    }
    real.push(alice.expect_push("joined"));
    server.add_member("route-42", "carol");
    real.push(alice.expect_push("member_joined"));
    server.remove_member("route-42", "carol");
    real.push(alice.expect_push("member_left"));
    server.remove_member("route-42", "bob");
    real.push(bob.expect_push("left"));
    let now = chat_engine::protocol::now_ms() / 1000;
    let ending = server.token_with(&json!({"sub": "dave", "exp": now + 30, "iat": now}));
    let mut dave = server.try_ws_token(&ending).expect("connect");
    real.push(dave.expect_push("token_expiring"));
    real.push(dave.request(json!({"type": "auth", "token": server.token("dave")})));
    let flood: Vec<Value> = (0..10)
        .map(|_| alice.request(json!({"type": "send", "room_id": "route-42", "text": "x"})))
        .collect();
    real.extend(flood.into_iter().find(|reply| reply["type"] == "error"));
    let documented = protocol_frames("### Server to client");
    for frame in &real {
        let kind = frame_kind(frame);
        let example = documented
            .iter()
            .find(|example| frame_kind(example) == kind)
            .unwrap_or_else(|| panic!("docs/protocol.md has no {kind} frame"));
        let (mut want, mut got) = (BTreeSet::new(), BTreeSet::new());
        shape(example, "", &mut want);
        shape(frame, "", &mut got);
        // Optional fields appear in one and not the other; all fields must be known.
        let optional = [".unread", ".client_msg_id"];
        let unknown: Vec<_> = got
            .symmetric_difference(&want)
            .filter(|field| !optional.iter().any(|o| field.ends_with(o)))
            .collect();
        assert!(
            unknown.is_empty(),
            "{kind}: {unknown:?}\nreal: {frame}\ndocs/protocol.md: {example}"
        );
    }
    let kinds: BTreeSet<String> = real.iter().map(frame_kind).collect();
    let documented_kinds: BTreeSet<String> = documented.iter().map(frame_kind).collect();
    assert_eq!(kinds, documented_kinds, "every documented frame was seen");
}

/// The repository's Markdown documents: README.md and docs/*.md.
fn markdown_documents() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("read docs/")
        .map(|entry| entry.expect("a docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "docs/ holds the documentation");
    let mut all = vec![root.join("README.md")];
    all.extend(docs);
    all
}

/// The targets of the Markdown links outside code blocks: inline `[text](target "title")`
/// and reference definitions `[name]: target`.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_code_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code_block = !in_code_block;
            continue;
        }
        if in_code_block {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            targets.push(after[..end].to_owned());
            rest = &after[end..];
        }
        let trimmed = line.trim_start();
        if let Some(definition) = trimmed
            .strip_prefix('[')
            .and_then(|r| r.split_once("]:"))
            .map(|(_, target)| target)
        {
            targets.push(definition.to_owned());
        }
    }
    targets
        .into_iter()
        .map(|target| {
            let target = target.split_whitespace().next().unwrap_or_default();
            target
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
        .collect()
}

/// The anchors GitHub gives a document's headings: lower case, punctuation dropped,
/// spaces as hyphens.
fn heading_anchors(text: &str) -> BTreeSet<String> {
    let mut in_code_block = false;
    let mut anchors = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code_block = !in_code_block;
        }
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        if in_code_block {
            continue;
        }
        let title = heading.trim_start_matches('#').trim();
        let anchor: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        anchors.insert(anchor);
    }
    anchors
}

/// Where `target`, linked from the document in `dir`, points inside the repository at
/// `root`: `None` when it escapes the repository.
fn resolve_in_repository(root: &Path, dir: &Path, target: &str) -> Option<PathBuf> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<String> = dir
        .strip_prefix(root)
        .ok()?
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part.to_owned()),
        }
    }
    Some(
        parts
            .iter()
            .fold(root.to_path_buf(), |path, part| path.join(part)),
    )
}

#[test]
fn readme_is_short_and_no_document_points_outside_the_repository() {
    let readme = include_str!("../README.md");
    assert!(
        readme.len() < 12 * 1024,
        "README.md is {} bytes; it must stay under 12 KiB (details go in docs/)",
        readme.len()
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut problems = Vec::new();
    for document in markdown_documents() {
        let name = document.strip_prefix(root).unwrap().display().to_string();
        let text = std::fs::read_to_string(&document).expect("read a document");
        // The documents describe the protocol and the design in their own words.
        for outside in ["PROTOCOL.md", "DESIGN.md", "../shared"] {
            if text.contains(outside) {
                problems.push(format!("{name} mentions {outside}"));
            }
        }
        let dir = document.parent().unwrap();
        for target in link_targets(&text) {
            if ["http://", "https://", "mailto:"]
                .iter()
                .any(|scheme| target.starts_with(scheme))
            {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                Some(document.clone())
            } else if path.contains(':') {
                None // another scheme (file:, ...): not a file of this repository
            } else {
                resolve_in_repository(root, dir, path)
            };
            let Some(file) = file else {
                problems.push(format!("{name}: {target} points outside the repository"));
                continue;
            };
            if !file.exists() {
                problems.push(format!("{name}: {target} does not exist"));
                continue;
            }
            if let Some(anchor) = anchor {
                let linked = std::fs::read_to_string(&file).unwrap_or_default();
                if !heading_anchors(&linked).contains(anchor) {
                    problems.push(format!("{name}: {target} names no heading"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
