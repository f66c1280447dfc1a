//! API docs and the demo: `/openapi.json` against the router and a real validator, Swagger
//! UI served with no network, and the `/demo` page driven in headless Chromium.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use common::{agent, tool_available as available, TestServer};

/// Every route the server has, as the OpenAPI document spells it.
const ROUTES: [(&str, &str); 12] = [
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
    ("post", "/v1/admin/backup"),
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
            .replace("{user_id}", "someone");
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
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        (response.status().as_u16(), content_type, body)
    };
    // /docs redirects to the page (ureq follows), which loads only its own files.
    let (status, content_type, page) = get("/docs");
    assert_eq!(status, 200);
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

/// Where `.ci/run` installs playwright-core, unless NODE_PATH says otherwise.
fn node_path() -> PathBuf {
    std::env::var_os("NODE_PATH").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/chat-engine-ci/node/node_modules")
        },
        PathBuf::from,
    )
}

#[test]
fn the_demo_page_chats_between_two_browser_windows() {
    let test = "the_demo_page_chats_between_two_browser_windows";
    let mut chromium = Command::new("/usr/bin/chromium");
    chromium.arg("--version");
    let mut playwright = Command::new("node");
    playwright
        .args(["-e", "require('playwright-core')"])
        .env("NODE_PATH", node_path());
    if !available(test, "chromium", chromium)
        || !available(test, "node with playwright-core", playwright)
    {
        return;
    }
    let server = TestServer::start_with(|config| {
        config.auth.jwt_secret = chat_engine::config::DEV_JWT_SECRET.to_owned();
    });
    server.create_room("route-1", "alice");
    server.add_member("route-1", "bob");
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-e2e.png");
    let _ = std::fs::remove_file(&screenshot);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/demo.cjs");
    let out = Command::new("node")
        .arg(script)
        .arg(format!("http://{}", server.addr))
        .arg(&screenshot)
        .env("NODE_PATH", node_path())
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(screenshot.exists(), "screenshot saved");
    // What the browsers did went through the server: the history has all three messages.
    let (_, page) = server.rest("GET", "/v1/rooms/route-1/messages", None);
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["first, while bob looks elsewhere", "hello bob", "hi alice"]
    );
}

/// The frames of one README code block that follows `heading`.
fn readme_frames(heading: &str) -> Vec<Value> {
    let readme = include_str!("../README.md");
    let start = readme.find(heading).expect("heading in README");
    let block = readme[start..].split("```").nth(1).expect("a code block");
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
                // `data` is the client's own object.
                if key != "data" {
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

#[test]
fn the_readmes_websocket_frames_are_the_servers() {
    for frame in readme_frames("### Client to server") {
        let text = frame.to_string();
        assert!(
            chat_engine::protocol::parse_request(&text).is_ok(),
            "README's client frame is refused: {text}"
        );
    }
    // Make the server produce every kind of frame, and compare shapes with README's.
    let server = TestServer::start_with(|config| config.limits.send_rate = 2);
    server.create_room("route-42", "alice");
    server.add_member("route-42", "bob");
    let mut alice = server.ws("alice");
    let mut bob = server.ws("bob");
    alice.send_msg("route-42", "Pickup in 5");
    let mut real = vec![
        alice.request(json!({"type": "rooms"})),
        alice.request(json!({"type": "sync", "room_id": "route-42"})),
        bob.request(json!({"type": "send", "room_id": "route-42", "text": "On my way", "client_msg_id": "b7f3c2"})),
        bob.request(json!({"type": "direct", "user_id": "alice"})),
        bob.request(json!({"type": "read", "room_id": "route-42", "seq": 2})),
        bob.request(json!({"type": "ping"})),
    ];
    bob.send_json(&json!({"type": "typing", "room_id": "route-42"}));
    real.push(alice.expect_push("typing"));
    real.push(alice.expect_push("message"));
    real.push(alice.expect_push("joined"));
    server.add_member("route-42", "carol");
    real.push(alice.expect_push("member_joined"));
    server.remove_member("route-42", "carol");
    real.push(alice.expect_push("member_left"));
    server.remove_member("route-42", "bob");
    real.push(bob.expect_push("left"));
    let flood: Vec<Value> = (0..10)
        .map(|_| alice.request(json!({"type": "send", "room_id": "route-42", "text": "x"})))
        .collect();
    real.extend(flood.into_iter().find(|reply| reply["type"] == "error"));
    let documented = readme_frames("### Server to client");
    for frame in &real {
        let kind = frame["type"].as_str().unwrap();
        let example = documented
            .iter()
            .find(|example| example["type"] == kind)
            .unwrap_or_else(|| panic!("README has no {kind} frame"));
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
            "{kind}: {unknown:?}\nreal: {frame}\nREADME: {example}"
        );
    }
    let kinds: BTreeSet<&str> = real.iter().map(|f| f["type"].as_str().unwrap()).collect();
    let documented_kinds: BTreeSet<&str> = documented
        .iter()
        .map(|f| f["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, documented_kinds, "every documented frame was seen");
}
