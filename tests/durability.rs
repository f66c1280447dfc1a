//! The binary as an operator runs it: restart, SIGKILL, SIGTERM/SIGINT, bad configs, `token`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tmpfs::Tmpfs;
use common::*;
use serde_json::{json, Value};

fn sorted_rooms(mut rooms: Vec<Value>) -> Vec<Value> {
    for r in rooms.iter_mut() {
        let mut m = members(r);
        m.sort();
        r["members"] = json!(m);
    }
    rooms.sort_by(|a, b| a["room_id"].as_str().cmp(&b["room_id"].as_str()));
    rooms
}

fn normalized_room(mut room: Value) -> Value {
    room["members"] = json!(members(&room));
    room
}

#[test]
fn state_survives_sigterm_and_restart() {
    let data = tempfile::tempdir().unwrap();
    let config = config_toml("");
    let mut p = Process::start(data.path(), &config);

    p.create_room("r1", "d1");
    p.add_member("r1", "u1");
    p.add_member("r1", "u2");
    p.add_member("r1", "u3");
    p.remove_member("r1", "u3");
    p.create_room("r2", "d1");
    p.add_member("r2", "u1");
    let (status, _) = p.rest("DELETE", "/v1/rooms/r2", None);
    assert_eq!(status, 204);

    let mut u1 = p.ws("u1");
    let mut d1 = p.ws("d1");
    let first = u1.request_ok(
        json!({"type": "send", "room_id": "r1", "text": "hello", "client_msg_id": "c1"}),
        "sent",
    );
    d1.send_msg("r1", "d-1");
    d1.send_msg("r1", "d-2");
    let system = p.post_message(
        "r1",
        json!({"text": "sys", "client_msg_id": "s1", "data": {"k": 1}}),
    );
    u1.request_ok(json!({"type": "read", "room_id": "r1", "seq": 2}), "ok");
    let direct = u1.request_ok(json!({"type": "direct", "user_id": "u2"}), "room")["room"].clone();
    let direct_id = direct["room_id"].as_str().unwrap().to_owned();
    u1.send_msg(&direct_id, "dm");

    let rooms_before = sorted_rooms(u1.rooms());
    assert_eq!(
        find_room(&rooms_before, "r1").unwrap()["unread"],
        2,
        "d-2 and sys after seq 2"
    );
    let u2_rooms_before = sorted_rooms(p.ws("u2").rooms());
    let history_before = u1.sync_all_since_seq("r1", 0, 100);
    assert_eq!(seqs(&history_before), vec![1, 2, 3, 4]);
    let (_, r1_before) = p.rest("GET", "/v1/rooms/r1", None);

    let started = Instant::now();
    terminate_cleanly(&mut p);
    println!("SIGTERM to exit: {:?}", started.elapsed());
    // Connections got 1001.
    assert_eq!(u1.expect_close(RECV_TIMEOUT), Some(1001));
    drop(p);

    let p = Process::start(data.path(), &config);
    let (status, r1_after) = p.rest("GET", "/v1/rooms/r1", None);
    assert_eq!(status, 200);
    assert_eq!(
        normalized_room(r1_after),
        normalized_room(r1_before),
        "room and members"
    );
    let (status, _) = p.rest("GET", "/v1/rooms/r2", None);
    assert_eq!(status, 404, "a closed room stays closed");
    let (status, _) = p.rest("PUT", "/v1/rooms/r2", Some(json!({"owner_id": "d1"})));
    assert_eq!(status, 409, "a closed room id stays taken");

    let mut u1 = p.ws("u1");
    assert_eq!(
        sorted_rooms(u1.rooms()),
        rooms_before,
        "rooms, unread and direct room survive"
    );
    assert_eq!(sorted_rooms(p.ws("u2").rooms()), u2_rooms_before);
    let history_after = u1.sync_all_since_seq("r1", 0, 100);
    assert_eq!(history_after, history_before, "messages survive");

    // client_msg_id dedup survives.
    let again = u1.request_ok(
        json!({"type": "send", "room_id": "r1", "text": "hello", "client_msg_id": "c1"}),
        "sent",
    );
    assert_eq!(
        (again["seq"].clone(), again["ts"].clone()),
        (first["seq"].clone(), first["ts"].clone())
    );
    let (status, repeat) = p.rest(
        "POST",
        "/v1/rooms/r1/messages",
        Some(json!({"text": "sys", "client_msg_id": "s1", "data": {"k": 1}})),
    );
    assert_eq!(status, 200);
    assert_eq!(repeat["message"], system);

    // seq and ts continue.
    let next = u1.send_msg("r1", "after restart");
    assert_eq!(next["seq"], 5);
    assert!(next["ts"].as_u64().unwrap() > history_before[3]["ts"].as_u64().unwrap());
    let same = u1.request_ok(json!({"type": "direct", "user_id": "u2"}), "room");
    assert_eq!(
        same["room"]["room_id"],
        direct_id.as_str(),
        "same direct room"
    );
    let dm = u1.sync(json!({"room_id": direct_id}));
    assert_eq!(dm["messages"][0]["text"], "dm");
}

/// A sender thread's result: its (seq, text) acks and the close code it saw.
type SenderThread = std::thread::JoinHandle<(Vec<(u64, String)>, Option<u16>)>;

/// Sends from `senders` connections until the connection dies; returns (seq, text) acks and
/// the close code each connection saw.
fn hammer(
    endpoint: &Endpoint,
    room: &str,
    senders: usize,
    acked: Arc<AtomicUsize>,
) -> Vec<SenderThread> {
    (0..senders)
        .map(|s| {
            let mut c = endpoint.ws(&format!("s{s}"));
            let room = room.to_owned();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut acks = Vec::new();
                let mut outstanding: BTreeMap<u64, String> = BTreeMap::new();
                let mut next = 0u64;
                let mut close_code = None;
                'outer: loop {
                    while outstanding.len() < 16 {
                        let text = format!("s{s}-{next}");
                        let frame =
                            json!({"type": "send", "room_id": room, "text": text, "id": next});
                        if !c.try_send_json(&frame) {
                            break 'outer;
                        }
                        outstanding.insert(next, text);
                        next += 1;
                    }
                    match c.read_socket(Duration::from_secs(10)) {
                        Incoming::Frame(f) if f["type"] == "sent" => {
                            let id = f["id"].as_u64().expect("numeric id echoed");
                            let text = outstanding.remove(&id).expect("reply to a known id");
                            assert_eq!(f["room_id"], room.as_str());
                            acks.push((f["seq"].as_u64().unwrap(), text));
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Incoming::Frame(f) if f["type"] == "error" => {
                            // Not acknowledged (e.g. `unavailable` while shutting down).
                            if let Some(id) = f["id"].as_u64() {
                                outstanding.remove(&id);
                            }
                        }
                        Incoming::Frame(_) => {}
                        Incoming::Closed(code) => {
                            close_code = code;
                            if code.is_none() {
                                eprintln!("s{s}: ended without close frame: {:?}", c.end_reason);
                            }
                            return (acks, close_code);
                        }
                        Incoming::Timeout => return (acks, close_code),
                    }
                }
                // Sending failed: read what is still in the socket (acks, the close frame).
                loop {
                    match c.read_socket(Duration::from_secs(2)) {
                        Incoming::Frame(f) if f["type"] == "sent" => {
                            let id = f["id"].as_u64().unwrap();
                            let text = outstanding.remove(&id).unwrap();
                            acks.push((f["seq"].as_u64().unwrap(), text));
                        }
                        Incoming::Frame(_) => {}
                        Incoming::Closed(code) => {
                            close_code = close_code.or(code);
                            if close_code.is_none() {
                                eprintln!("s{s}: ended without close frame: {:?}", c.end_reason);
                            }
                            break;
                        }
                        Incoming::Timeout => break,
                    }
                }
                (acks, close_code)
            })
        })
        .collect()
}

fn setup_hammer_room(p: &Process, senders: usize) {
    p.create_room("r1", "s0");
    for s in 1..senders {
        p.add_member("r1", &format!("s{s}"));
    }
}

/// Every acknowledged message is present after restart, and seq has no gaps.
fn check_after_restart(p: &Process, acks: &BTreeMap<u64, String>) {
    let mut c = p.ws("s0");
    let all = c.sync_all_since_seq("r1", 0, 500);
    let got = seqs(&all);
    let max = got.last().copied().unwrap_or(0);
    assert_eq!(
        got,
        (1..=max).collect::<Vec<_>>(),
        "seq 1..={max} without gaps"
    );
    let max_acked = acks.keys().last().copied().unwrap_or(0);
    assert!(
        max >= max_acked,
        "acked seq {max_acked} missing (max stored {max})"
    );
    for (seq, text) in acks {
        let m = &all[(*seq - 1) as usize];
        assert_eq!(m["seq"], *seq);
        assert_eq!(m["text"], text.as_str(), "acked seq {seq}");
    }
    for w in all.windows(2) {
        assert!(
            w[1]["ts"].as_u64().unwrap() > w[0]["ts"].as_u64().unwrap(),
            "ts increasing"
        );
    }
    println!("{} acknowledged, {} stored after restart", acks.len(), max);
    // The room keeps going from there.
    let next = c.send_msg("r1", "after restart");
    assert_eq!(next["seq"], max + 1);
}

fn collect_acks(threads: Vec<SenderThread>) -> (BTreeMap<u64, String>, Vec<Option<u16>>) {
    let mut acks = BTreeMap::new();
    let mut codes = Vec::new();
    for t in threads {
        let (list, code) = t.join().expect("sender thread");
        for (seq, text) in list {
            assert!(
                acks.insert(seq, text).is_none(),
                "seq {seq} acknowledged twice"
            );
        }
        codes.push(code);
    }
    (acks, codes)
}

fn wait_for_acks(acked: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "only {} acks in 30 s",
            acked.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGTERM and asserts the server exits with status 0 within PROTOCOL.md's 10 s.
fn terminate_cleanly(p: &mut Process) {
    p.terminate();
    let status = p
        .wait_timeout(Duration::from_secs(10))
        .expect("SIGTERM stops the server within 10 s");
    assert!(
        status.success(),
        "exit status 0 on SIGTERM, got {status:?}; stderr:\n{}",
        p.stderr_text()
    );
}

/// A server with 8 senders hammering room "r1", once at least 300 sends were acked.
struct UnderLoad {
    data: tempfile::TempDir,
    config: String,
    process: Process,
    threads: Vec<SenderThread>,
    acked: Arc<AtomicUsize>,
}

fn under_load() -> UnderLoad {
    const SENDERS: usize = 8;
    let data = tempfile::tempdir().unwrap();
    let config = config_toml("[limits]\nsend_rate = 1000000\n");
    let process = Process::start(data.path(), &config);
    setup_hammer_room(&process, SENDERS);
    let acked = Arc::new(AtomicUsize::new(0));
    let threads = hammer(&process, "r1", SENDERS, acked.clone());
    wait_for_acks(&acked, 300);
    UnderLoad {
        data,
        config,
        process,
        threads,
        acked,
    }
}

#[test]
fn sigkill_loses_no_acknowledged_message() {
    let UnderLoad {
        data,
        config,
        process: mut p,
        threads,
        ..
    } = under_load();
    p.kill_9();
    let status = p.wait();
    assert!(!status.success(), "killed");
    let (acks, _) = collect_acks(threads);
    assert!(acks.len() >= 300);
    drop(p);

    let p = Process::start(data.path(), &config);
    check_after_restart(&p, &acks);
}

#[test]
fn sigterm_while_sending_exits_0_and_loses_no_acknowledged_message() {
    let UnderLoad {
        data,
        config,
        process: mut p,
        threads,
        ..
    } = under_load();
    terminate_cleanly(&mut p);
    let (acks, codes) = collect_acks(threads);
    for code in &codes {
        assert_eq!(
            *code,
            Some(1001),
            "connections are closed with 1001 on shutdown: {codes:?}"
        );
    }
    drop(p);

    let p = Process::start(data.path(), &config);
    check_after_restart(&p, &acks);
}

#[test]
fn sigint_stops_with_exit_0() {
    let data = tempfile::tempdir().unwrap();
    let mut p = Process::start(data.path(), &config_toml(""));
    p.create_room("r1", "d1");
    let status = std::process::Command::new("kill")
        .args(["-INT", &p.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = p
        .wait_timeout(Duration::from_secs(10))
        .expect("SIGINT stops the server within 10 s");
    assert!(status.success(), "exit 0 on SIGINT: {status:?}");
    drop(p);
    let p = Process::start(data.path(), &config_toml(""));
    assert_eq!(p.rest("GET", "/v1/rooms/r1", None).0, 200);
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY=1 once serving, WATCHDOG=1 at half
/// the interval while running, STOPPING=1 on SIGTERM.
#[test]
fn tells_systemd_ready_feeds_the_watchdog_and_says_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    let socket_text = socket_path.to_str().unwrap();
    let mut p = Process::start_with_env(
        &dir.path().join("data"),
        &config_toml(""),
        &[("NOTIFY_SOCKET", socket_text), ("WATCHDOG_USEC", "300000")],
    );
    let next = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification within 5 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(first.lines().any(|l| l == "READY=1"), "first: {first:?}");
    // The server answers by the time systemd would let clients in.
    assert_eq!(p.rest("GET", "/readyz", None).0, 200);
    for _ in 0..3 {
        assert_eq!(next().trim(), "WATCHDOG=1");
    }
    p.terminate();
    let stopping = loop {
        let note = next();
        if note != "WATCHDOG=1\n" {
            break note;
        }
    };
    assert!(
        stopping.lines().any(|l| l == "STOPPING=1"),
        "after SIGTERM: {stopping:?}"
    );
    assert!(p.wait().success());
}

/// CHAT_ENGINE_JWT_SECRET and CHAT_ENGINE_API_KEYS replace the file's secrets, so a config
/// file can be shared without them.
#[test]
fn secrets_from_the_environment_replace_the_files() {
    let data = tempfile::tempdir().unwrap();
    let p = Process::start_with_env(
        data.path(),
        &config_toml(""),
        &[
            ("CHAT_ENGINE_JWT_SECRET", "env-jwt-secret"),
            ("CHAT_ENGINE_API_KEYS", "env-key-1,env-key-2"),
        ],
    );
    let put = |key: &str| {
        p.rest_text(
            "PUT",
            "/v1/rooms/r1",
            Some(&format!("Bearer {key}")),
            Some(r#"{"owner_id":"d1"}"#),
        )
        .0
    };
    assert_eq!(put(TEST_API_KEY), 401, "the file's key no longer works");
    assert_eq!(put("env-key-2"), 201);
    let from_env = token_with_secret("env-jwt-secret", "d1");
    let mut c = Client::connect(p.addr, &p.ws_url(Some(&from_env)), None).expect("env token");
    assert_eq!(c.rooms().len(), 1);
    let from_file = p.token("d1");
    assert!(matches!(
        Client::connect(p.addr, &p.ws_url(Some(&from_file)), None),
        Err(ConnectError::Http(401))
    ));
}

/// Runs `serve` with `config` (None: a missing file) and asserts a non-zero exit with a
/// one-line reason mentioning one of `keywords`.
fn assert_bad_config(name: &str, config: Option<&str>, listen: bool, keywords: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat-engine.toml");
    if let Some(text) = config {
        std::fs::write(&path, text).unwrap();
    }
    let data = dir.path().join("data");
    let path_s = path.to_str().unwrap();
    let data_s = data.to_str().unwrap();
    let mut args = vec!["serve", "--config", path_s, "--data", data_s];
    if listen {
        args.extend(["--listen", "127.0.0.1:0"]);
    }
    let (status, _stdout, stderr) = run_bin(&args, Duration::from_secs(15));
    assert!(
        !status.success(),
        "{name}: must exit non-zero, got {status:?}; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{name}: a one-line reason on stderr, got:\n{stderr}"
    );
    assert!(
        keywords.iter().any(|k| lines[0].contains(k)),
        "{name}: the reason should mention one of {keywords:?}: {}",
        lines[0]
    );
}

#[test]
fn bad_config_exits_non_zero_with_a_one_line_reason() {
    assert_bad_config(
        "invalid TOML",
        Some("[server\nlisten = = \"x\"\n"),
        true,
        &["chat-engine.toml", "TOML", "toml", "config"],
    );
    assert_bad_config(
        "wrong type",
        Some("[limits]\nsend_rate = \"fast\"\n"),
        true,
        &["send_rate", "integer", "invalid type"],
    );
    assert_bad_config(
        "wrong type (list)",
        Some("[auth]\napi_keys = \"one-key\"\n"),
        true,
        &["api_keys", "sequence", "invalid type"],
    );
    assert_bad_config(
        "unknown direct.policy",
        Some("[direct]\npolicy = \"everyone\"\n"),
        true,
        &["everyone", "policy"],
    );
    assert_bad_config(
        "bad listen address",
        Some("[server]\nlisten = \"not-an-address\"\n"),
        false,
        &["not-an-address", "listen"],
    );
    assert_bad_config("missing file", None, true, &["chat-engine.toml"]);
    // Without the feature the key itself is refused; with it, a URL that is not Redis's.
    assert_bad_config(
        "bad cluster.redis_url",
        Some("[cluster]\nredis_url = \"http://example\"\n"),
        true,
        &["cluster.redis_url"],
    );
    assert_bad_config(
        "cluster.shards = 0",
        Some("[cluster]\nshards = 0\n"),
        true,
        &["cluster.shards"],
    );
}

/// Runs `serve --listen LISTEN --data DATA` with no config, expecting it to exit within 30 s;
/// returns its status and stderr.
fn serve_until_exit(listen: &str, data: &std::path::Path) -> (std::process::ExitStatus, String) {
    let data = data.to_str().unwrap();
    let (status, _, stderr) = run_bin(
        &["serve", "--listen", listen, "--data", data],
        Duration::from_secs(30),
    );
    (status, stderr)
}

#[test]
fn bad_listen_flag_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = serve_until_exit("nonsense:port", &dir.path().join("data"));
    assert!(!status.success(), "bad --listen: {status:?}; {stderr}");
    assert!(!stderr.trim().is_empty(), "a reason on stderr");
}

#[test]
fn a_listen_address_in_use_exits_non_zero_with_a_one_line_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = serve_until_exit(&address, &dir.path().join("data"));
    assert!(!status.success(), "{status:?}; {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got:\n{stderr}");
    assert!(lines[0].contains(&address), "{}", lines[0]);
}

fn token_cmd(args: &[&str]) -> String {
    let (status, stdout, stderr) = run_bin(args, Duration::from_secs(15));
    assert!(
        status.success(),
        "chat-engine {args:?}: {status:?}; stderr: {stderr}"
    );
    let token = stdout.trim_end_matches('\n').trim_end_matches('\r');
    assert!(
        !token.contains('\n') && !token.contains(' '),
        "just the token: {stdout:?}"
    );
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    token.to_owned()
}

/// Also on a server that requires `iss` and `aud`: the printed token carries them.
#[test]
fn token_subcommand_prints_a_token_the_server_accepts() {
    let data = tempfile::tempdir().unwrap();
    let strict = "issuer = \"https://id.example\"\naudience = \"chat\"";
    let p = Process::start(data.path(), &config_toml(strict));
    p.create_room("r1", "u1");
    let config_path = p.config_path.to_str().unwrap().to_owned();

    for args in [
        vec!["token", "u1", "--config", config_path.as_str()],
        vec![
            "token",
            "u1",
            "--ttl",
            "2h",
            "--config",
            config_path.as_str(),
        ],
    ] {
        let token = token_cmd(&args);
        let url = p.ws_url(Some(&token));
        let mut c = Client::connect(p.addr, &url, None).expect("the printed token is accepted");
        c.user = "u1".into();
        let rooms = c.rooms();
        assert_eq!(rooms.len(), 1, "the token is u1's: {rooms:?}");
        let sent = c.send_msg("r1", "via cli token");
        let push = c.expect_push("message");
        assert_eq!(push["message"]["seq"], sent["seq"]);
        assert_eq!(push["message"]["sender"], "u1");
    }

    // Without --config: signed with the built-in default secret, which this server does not use.
    let default_token = token_cmd(&["token", "u1"]);
    let url = p.ws_url(Some(&default_token));
    match Client::connect(p.addr, &url, None) {
        Err(ConnectError::Http(401)) => {}
        Ok(_) => panic!("a token signed with the default secret must not pass a configured server"),
        Err(e) => panic!("expected 401, got {e:?}"),
    }
    // ...but a server on the built-in defaults accepts it.
    let server = TestServer::start_with(|c| {
        c.auth.jwt_secret = chat_engine::Config::default().auth.jwt_secret
    });
    let url = server.ws_url(Some(&default_token));
    let mut c = Client::connect(server.addr, &url, None).expect("default-secret token accepted");
    assert_eq!(c.request(json!({"type": "ping"}))["type"], "pong");

    // A bad user id is refused.
    let (status, _, _) = run_bin(&["token", "bad user"], Duration::from_secs(15));
    assert!(!status.success(), "token for an invalid user id must fail");
}

/// `chat-engine backup` while 8 senders keep writing: the copy is a working data directory
/// holding a gapless prefix with everything acknowledged before the backup began. With the
/// server stopped, the offline copy holds everything.
#[test]
fn backup_online_under_load_and_offline_restore_to_working_data_dirs() {
    let UnderLoad {
        data,
        config,
        process: mut p,
        threads,
        acked,
    } = under_load();
    let backups = tempfile::tempdir().unwrap();
    let online = backups.path().join("online");
    let acked_before = acked.load(Ordering::SeqCst) as u64;
    let server = p.addr.to_string();
    let config_file = backups.path().join("chat-engine.toml");
    std::fs::write(&config_file, &config).unwrap();
    let config_path = config_file.to_str().unwrap().to_owned();
    let (status, out, err) = run_bin(
        &[
            "backup",
            "--to",
            online.to_str().unwrap(),
            "--config",
            &config_path,
            "--server",
            &server,
        ],
        Duration::from_secs(60),
    );
    assert!(status.success(), "online backup: {out} {err}");
    assert!(out.contains("by the server at"), "{out}");
    // At most 8 x 16 sends are in flight, so 500 more acks means writes the copy lacks.
    wait_for_acks(&acked, acked.load(Ordering::SeqCst) + 500);
    let (again, _, err) = run_bin(
        &[
            "backup",
            "--to",
            online.to_str().unwrap(),
            "--config",
            &config_path,
        ],
        Duration::from_secs(60),
    );
    assert!(!again.success(), "a backup never overwrites");
    assert!(err.contains("already exists"), "{err}");
    terminate_cleanly(&mut p);
    let (acks, _) = collect_acks(threads);
    drop(p);

    let offline = backups.path().join("offline");
    let (status, out, err) = run_bin(
        &[
            "backup",
            "--to",
            offline.to_str().unwrap(),
            "--config",
            &config_path,
            "--data",
            data.path().to_str().unwrap(),
            "--server",
            &server,
        ],
        Duration::from_secs(60),
    );
    assert!(status.success(), "offline backup: {out} {err}");
    assert!(out.contains("no server was running"), "{out}");

    let restored = Process::start(&online, &config);
    let max = {
        let mut c = restored.ws("s0");
        seqs(&c.sync_all_since_seq("r1", 0, 500))
            .last()
            .copied()
            .unwrap_or(0)
    };
    assert!(
        max >= acked_before,
        "the online copy holds {max} messages; {acked_before} were acknowledged before it began"
    );
    assert!(
        max < acks.len() as u64,
        "sends after the backup are not in it"
    );
    let prefix: BTreeMap<u64, String> = acks
        .iter()
        .filter(|(seq, _)| **seq <= max)
        .map(|(seq, text)| (*seq, text.clone()))
        .collect();
    check_after_restart(&restored, &prefix);
    drop(restored);

    // The offline copy holds every acknowledged message.
    let restored = Process::start(&offline, &config);
    check_after_restart(&restored, &acks);
}

/// The seqs `GET /v1/rooms/r1/messages` returns, oldest first.
fn stored_seqs(p: &Process) -> Vec<u64> {
    let (status, body) = p.rest("GET", "/v1/rooms/r1/messages?since_seq=0&limit=500", None);
    assert_eq!(status, 200, "{body}");
    seqs(body["messages"].as_array().unwrap())
}

/// Polls until `stored_seqs` is `want`, for at most `within`.
fn wait_for_seqs(p: &Process, want: &[u64], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = stored_seqs(p);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "stored {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server config whose `history.retention_days` is `retention`.
fn retention_config(retention: Duration) -> String {
    config_toml(&format!(
        "[history]\nretention_days = {}\n",
        retention.as_secs_f64() / 86_400.0
    ))
}

/// `history.retention_days` (here 4 s) deletes each message once it is older, and a room
/// whose every message expired goes on from the same seq after a restart.
#[test]
fn retention_deletes_old_messages_and_the_seq_goes_on() {
    const RETENTION: Duration = Duration::from_secs(4);
    let data = tempfile::tempdir().unwrap();
    let config = retention_config(RETENTION);
    let mut p = Process::start(data.path(), &config);
    p.create_room("r1", "d1");
    for i in 1..=3 {
        p.post_message("r1", json!({"text": format!("old {i}")}));
    }
    std::thread::sleep(RETENTION / 2);
    for i in 1..=2 {
        p.post_message("r1", json!({"text": format!("new {i}")}));
    }
    assert_eq!(stored_seqs(&p), [1, 2, 3, 4, 5]);
    // The old ones go once they are older than 4 s; the new ones stay 2 s longer.
    wait_for_seqs(&p, &[4, 5], RETENTION);
    let mut d1 = p.ws("d1");
    let page = d1.sync(json!({"room_id": "r1", "since_seq": 0}));
    assert_eq!(seqs_of(&page), [4, 5], "sync agrees: {page}");
    assert_eq!(page["has_more"], false);
    wait_for_seqs(&p, &[], RETENTION);
    assert_eq!(
        p.metric("chat_engine_retention_deleted_messages_total"),
        5.0
    );
    drop(d1);

    terminate_cleanly(&mut p);
    drop(p);
    let p = Process::start(data.path(), &config);
    assert_eq!(stored_seqs(&p), Vec::<u64>::new());
    let next = p.post_message("r1", json!({"text": "after everything expired"}));
    assert_eq!(next["seq"], 6, "seq goes on: {next}");
    let mut d1 = p.ws("d1");
    let rooms = d1.rooms();
    assert_eq!(find_room(&rooms, "r1").unwrap()["unread"], 1, "{rooms:?}");
}

/// A `client_msg_id` is remembered as long as its message is kept: once retention (here
/// 2 s) deleted the message, a retry is a new message, whether the id was in the room's
/// memory or, after a restart, only on disk.
#[test]
fn retention_forgets_the_client_msg_ids_of_what_it_deleted() {
    const RETENTION: Duration = Duration::from_secs(2);
    let data = tempfile::tempdir().unwrap();
    let config = retention_config(RETENTION);
    let post = |p: &Process| {
        let body = json!({"text": "pickup moved", "client_msg_id": "k"});
        let (status, reply) = p.rest("POST", "/v1/rooms/r1/messages", Some(body));
        (status, reply["message"]["seq"].clone())
    };
    let mut p = Process::start(data.path(), &config);
    p.create_room("r1", "d1");
    assert_eq!(post(&p), (201, json!(1)));
    assert_eq!(
        post(&p),
        (200, json!(1)),
        "a retry while the message is kept"
    );
    wait_for_seqs(&p, &[], RETENTION * 3);
    assert_eq!(
        post(&p),
        (201, json!(2)),
        "a retry after retention deleted it"
    );

    terminate_cleanly(&mut p);
    drop(p);
    let p = Process::start(data.path(), &config);
    assert_eq!(post(&p), (200, json!(2)), "after a restart, from disk");
    wait_for_seqs(&p, &[], RETENTION * 3);
    // The sweep that deleted it marks its id forgotten right after.
    let deadline = Instant::now() + RETENTION;
    loop {
        match post(&p) {
            (201, seq) => {
                assert_eq!(seq, 3);
                break;
            }
            (status, seq) => {
                assert_eq!((status, seq), (200, json!(2)));
                assert!(Instant::now() < deadline, "the id was never forgotten");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A full disk: sends get `unavailable` (never a false `sent`) and `/readyz` 503; once space
/// returns the server recovers by itself, with no seq gap, and after SIGKILL and restart
/// every acknowledged message is there. Runs on a real, small tmpfs.
#[test]
fn full_disk_answers_unavailable_loses_nothing_and_recovers() {
    // RocksDB resumes after a full disk once the free space exceeds its write buffer
    // (64 MiB), so the disk must be larger than that.
    let Some(disk) = Tmpfs::mount(128) else {
        eprintln!(
            "SKIPPED: mounting a tmpfs needs root; the injected-fault unit test covers the logic"
        );
        return;
    };
    let data = disk.path().join("data");
    let config = config_toml("[limits]\nsend_rate = 1000000\nmax_message_bytes = 20000\n");
    let mut p = Process::start(&data, &config);
    p.create_room("r1", "s0");
    let mut c = p.ws("s0");
    let filler = disk.fill_leaving(512 * 1024);

    let text = |i: u32| format!("{i:05}-{}", "x".repeat(15_000));
    let send = |c: &mut Client, i: u32| {
        c.request(json!({"type": "send", "room_id": "r1", "text": text(i), "client_msg_id": format!("c{i}")}))
    };
    let mut acks = BTreeMap::new();
    let mut i = 0;
    let refused = loop {
        i += 1;
        assert!(i < 1_000, "the disk never filled up");
        let reply = send(&mut c, i);
        match reply["type"].as_str() {
            Some("sent") => {
                acks.insert(reply["seq"].as_u64().unwrap(), text(i));
            }
            _ => break reply,
        }
    };
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert_eq!(p.rest("GET", "/readyz", None).0, 503);
    for _ in 0..5 {
        i += 1;
        assert_eq!(send(&mut c, i)["code"], "unavailable", "still full");
    }

    std::fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let recovered = loop {
        i += 1;
        let reply = send(&mut c, i);
        if reply["type"] == "sent" {
            break reply;
        }
        assert_eq!(reply["code"], "unavailable", "{reply}");
        assert!(
            Instant::now() < deadline,
            "no recovery within 60 s of freeing space"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let max_acked = *acks
        .keys()
        .last()
        .expect("some sends fit before the disk filled");
    assert_eq!(recovered["seq"], max_acked + 1, "refused sends took no seq");
    acks.insert(max_acked + 1, text(i));
    assert_eq!(p.rest("GET", "/readyz", None).0, 200);
    drop(c);

    p.kill_9();
    p.wait();
    drop(p);
    let p = Process::start(&data, &config);
    check_after_restart(&p, &acks);
}

/// The resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// A member who never reads sits in a busy room: 90 MB of messages go by, and the server's
/// RSS grows by far less, because its queue is bounded (the frames are shared, the queue
/// holds at most `limits.outbound_queue`, and a stalled socket write holds one batch). When
/// it finally reads it gets what fitted, then 1013.
#[test]
fn a_member_who_never_reads_does_not_grow_the_servers_memory() {
    const SIZE: usize = 60_000;
    let data = tempfile::tempdir().unwrap();
    let config = config_toml(
        "[storage]\nwrite_buffer_bytes = 4194304\n\
         [limits]\nmax_message_bytes = 65536\nmax_body_bytes = 70000\nsend_rate = 1000000\n",
    );
    let p = Process::start(data.path(), &config);
    p.create_room("r1", "writer");
    p.add_member("r1", "sleeper");
    let mut sleeper = p.ws("sleeper");
    // Each post's text is unique, so no two pushes share a frame.
    let post = |count: usize, tag: &'static str| {
        p.post_in_parallel("r1", tag, 4, count / 4, move |t, i| {
            format!("{tag}{t}-{i}-{}", "m".repeat(SIZE))
        });
    };
    // Warm up: the room's cache fills (200 messages), allocator arenas settle.
    post(400, "warm");
    let before = rss_kib(p.pid());
    post(1_500, "busy");
    let after = rss_kib(p.pid());
    let grown_mib = after.saturating_sub(before) / 1024;
    println!("RSS {before} KiB -> {after} KiB (+{grown_mib} MiB) over 90 MB of messages");
    assert!(
        grown_mib < 30,
        "RSS grew {grown_mib} MiB while 90 MB passed a member who never reads"
    );
    // It is still bounded when the sleeper wakes: in order, then 1013.
    let mut last = 0;
    let code = loop {
        match sleeper.read_socket(RECV_TIMEOUT) {
            Incoming::Frame(f) if f["type"] == "message" => {
                let seq = f["message"]["seq"].as_u64().unwrap();
                assert_eq!(seq, last + 1, "in order, no gaps");
                last = seq;
            }
            Incoming::Frame(_) => {}
            Incoming::Closed(code) => break code,
            Incoming::Timeout => panic!("never closed; read up to seq {last}"),
        }
    };
    assert_eq!(
        code,
        Some(1013),
        "closed as a slow consumer after seq {last}"
    );
    assert!(last < 1_900, "it did not get everything queued");
}

/// Runs `serve` on `data` and asserts it refuses to start: exit 1 with a one-line reason
/// containing `reason`.
fn assert_refuses_data(data: &std::path::Path, reason: &str) {
    let (status, err) = serve_until_exit("127.0.0.1:0", data);
    assert_eq!(status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("chat-engine: ") && last.contains(reason),
        "want a reason with {reason:?}, got: {err}"
    );
}

/// Data written by a newer chat-engine and a damaged database each stop the server at
/// start-up with a clear reason. Rooms load on first use, so a record in an unknown format
/// is found then: that room answers a clear error, never a silent misread, and the others
/// are served.
#[test]
fn corrupt_or_newer_data_is_refused_at_start_up() {
    use chat_engine::config::StorageConfig;
    use chat_engine::storage::{keys, Cf, KeyWrite, Storage};
    let write = |data: &std::path::Path, writes: Vec<KeyWrite>| {
        let config = StorageConfig {
            path: data.to_owned(),
            ..StorageConfig::default()
        };
        let storage = Storage::open(&config).unwrap();
        storage.write(&writes, true).unwrap();
    };
    let seeded = || {
        let data = tempfile::tempdir().unwrap();
        let mut p = Process::start(data.path(), &config_toml(""));
        p.create_room("r1", "d1");
        p.post_message("r1", json!({"text": "hello"}));
        terminate_cleanly(&mut p);
        data
    };

    let newer = seeded();
    write(
        newer.path(),
        vec![KeyWrite::put(Cf::Meta, keys::META_SCHEMA_VERSION, &99u32)],
    );
    assert_refuses_data(newer.path(), "schema version 99");

    let unknown = seeded();
    let mut record = chat_engine::storage::codec::encode(&"anything");
    record[0] = 77;
    write(
        unknown.path(),
        vec![KeyWrite::Put(
            Cf::Messages,
            keys::message(1, 1).to_vec(),
            record,
        )],
    );
    let p = Process::start(unknown.path(), &config_toml(""));
    let (code, body) = p.rest("GET", "/v1/rooms/r1/messages", None);
    assert_eq!(code, 500, "{body}");
    assert!(body.to_string().contains("format version 77"), "{body}");
    p.create_room("r2", "d2");
    assert_eq!(
        p.post_message("r2", json!({"text": "still served"}))["seq"],
        1
    );

    let damaged = seeded();
    std::fs::write(damaged.path().join("CURRENT"), "MANIFEST-999999\n").unwrap();
    assert_refuses_data(damaged.path(), "rocksdb");
}
