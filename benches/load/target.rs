//! The servers under test, each in its own process pinned to CPU 0 (where taskset exists):
//! chat-engine's release binary with durable storage in a temporary directory, or the
//! baseline (this benchmark binary run with `--baseline-server`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const JWT_SECRET: &str = "load-benchmark-secret";
pub const API_KEY: &str = "load-benchmark-key";

/// Whether processes can be pinned: taskset exists and there are at least two CPUs.
pub fn can_pin() -> bool {
    // All online CPUs, not the ones this (possibly already pinned) process may use.
    let cpus = Command::new("nproc")
        .arg("--all")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<usize>().ok())
        .unwrap_or(1);
    cpus >= 2
        && Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Runs this benchmark again on CPU 1 (the load generator's CPU) unless it already is, and
/// exits with its status. Returns only in the pinned process, or where pinning is impossible.
pub fn pin_load_generator() {
    if std::env::var_os("LOAD_PINNED").is_some() || !can_pin() {
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    let status = Command::new("taskset")
        .args(["-c", "1"])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env("LOAD_PINNED", "1")
        .status()
        .expect("re-run under taskset");
    std::process::exit(status.code().unwrap_or(1));
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ChatEngine,
    Baseline,
}

pub struct Target {
    pub kind: Kind,
    pub addr: SocketAddr,
    child: Child,
    /// When the (first node's) process was spawned: what [`Target::ready_after`] counts from.
    started: Instant,
    dir: tempfile::TempDir,
    /// Cluster mode: the other nodes (process, address, directory) and the Redis they share.
    peers: Vec<(Child, SocketAddr, tempfile::TempDir)>,
    redis: Option<(Child, tempfile::TempDir)>,
    /// Cluster mode: how long each node took from its spawn to its first `/readyz` 200.
    pub ready: Vec<Duration>,
}

impl Target {
    pub fn chat_engine() -> Target {
        Self::chat_engine_seeded(|_| {})
    }

    /// chat-engine on a data directory that `seed` fills (given the path `--data` will name,
    /// which does not exist yet) before the process starts.
    pub fn chat_engine_seeded(seed: impl FnOnce(&Path)) -> Target {
        Self::chat_engine_configured("", seed)
    }

    /// chat-engine with `extra_config` appended to its config file.
    pub fn chat_engine_with(extra_config: &str) -> Target {
        Self::chat_engine_configured(extra_config, |_| {})
    }

    fn chat_engine_configured(extra_config: &str, seed: impl FnOnce(&Path)) -> Target {
        let (child, addr, dir, started) = Self::start_node_seeded(extra_config, seed);
        Target {
            kind: Kind::ChatEngine,
            addr,
            child,
            started,
            dir,
            peers: Vec::new(),
            redis: None,
            ready: Vec::new(),
        }
    }

    /// `nodes` chat-engine nodes in cluster mode on one new redis-server (AOF, fsync on
    /// every write), all pinned with the servers; `None` where redis-server is missing.
    pub fn chat_engine_cluster(nodes: usize) -> Option<Target> {
        Self::chat_engine_cluster_with(nodes, "")
    }

    /// [`Target::chat_engine_cluster`] with `extra_config` on every node.
    pub fn chat_engine_cluster_with(nodes: usize, extra_config: &str) -> Option<Target> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let redis_dir = tempfile::tempdir().expect("tempdir");
        let mut command = pinned("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(redis_dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let redis = command.spawn().ok()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let cluster =
            format!("{extra_config}[cluster]\nredis_url = \"redis://127.0.0.1:{port}\"\n");
        // Each node answers once it has connected to Redis and read every log; the first
        // finds Redis empty, the others find it named and hold no position yet.
        let mut ready = Vec::new();
        let mut start = || {
            let (child, addr, dir, started) = Self::start_node_seeded(&cluster, |_| {});
            ready.push(ready_since(addr, started));
            (child, addr, dir, started)
        };
        let (child, addr, dir, started) = start();
        let peers: Vec<_> = (1..nodes)
            .map(|_| {
                let (child, addr, dir, _) = start();
                (child, addr, dir)
            })
            .collect();
        Some(Target {
            kind: Kind::ChatEngine,
            addr,
            child,
            started,
            dir,
            peers,
            redis: Some((redis, redis_dir)),
            ready,
        })
    }

    /// One node with `extra_config`, its data directory filled by `seed` first; also returns
    /// when its process was spawned.
    fn start_node_seeded(
        extra_config: &str,
        seed: impl FnOnce(&Path),
    ) -> (Child, SocketAddr, tempfile::TempDir, Instant) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("chat-engine.toml"),
            format!(
                "[auth]\njwt_secret = \"{JWT_SECRET}\"\napi_keys = [\"{API_KEY}\"]\n\
                 [limits]\nsend_rate = 1000000\nmax_connections_per_user = 64\n{extra_config}"
            ),
        )
        .expect("write config");
        seed(&dir.path().join("data"));
        let started = Instant::now();
        let (child, addr) = Self::spawn_chat_engine(&dir);
        (child, addr, dir, started)
    }

    /// How many nodes serve this target.
    pub fn nodes(&self) -> usize {
        1 + self.peers.len()
    }

    /// The address of node `node` (0 is [`Target::addr`]).
    pub fn node_addr(&self, node: usize) -> SocketAddr {
        match node {
            0 => self.addr,
            n => self.peers[n - 1].1,
        }
    }

    /// Starts chat-engine on the config and data in `dir`.
    fn spawn_chat_engine(dir: &tempfile::TempDir) -> (Child, SocketAddr) {
        let mut command = pinned(env!("CARGO_BIN_EXE_chat-engine"));
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(dir.path().join("chat-engine.toml"))
            .arg("--data")
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "warn,chat_engine=info");
        spawn(command)
    }

    /// Stops chat-engine with SIGTERM and starts it again on the same data: its caches are
    /// cold except for what start-up loads.
    pub fn restart(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.started = Instant::now();
        let (child, addr) = Self::spawn_chat_engine(&self.dir);
        self.child = child;
        self.addr = addr;
    }

    /// Waits for the first `/readyz` 200 (asking every 2 ms) and returns the time from the
    /// process's spawn to it: start-up as an operator's health check sees it.
    pub fn ready_after(&self) -> Duration {
        ready_since(self.addr, self.started)
    }

    /// The directory chat-engine's `--data` names.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn baseline() -> Target {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = pinned(&std::env::current_exe().expect("own path").to_string_lossy());
        command.arg("--baseline-server");
        let (child, addr) = spawn(command);
        Target {
            kind: Kind::Baseline,
            addr,
            child,
            started: Instant::now(),
            dir,
            peers: Vec::new(),
            redis: None,
            ready: Vec::new(),
        }
    }

    /// The server's resident set size, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_number("VmRSS")
    }

    /// One number of the server's `/proc/PID/status`: `VmRSS`, `RssAnon`, `RssFile` (KiB),
    /// `Threads`.
    pub fn status_number(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc status"))
    }

    /// CPU time used so far, in seconds: by every server process of the target, and by its
    /// Redis (0 without one).
    pub fn cpu_seconds(&self) -> (f64, f64) {
        let servers = std::iter::once(&self.child)
            .chain(self.peers.iter().map(|(child, _, _)| child))
            .map(cpu_seconds_of)
            .sum();
        let redis = self
            .redis
            .as_ref()
            .map_or(0.0, |(child, _)| cpu_seconds_of(child));
        (servers, redis)
    }

    /// The WebSocket URL for `user` in `room`, on the first node.
    pub fn ws_url(&self, user: &str, room: &str) -> String {
        self.ws_url_on(user, room, 0)
    }

    /// The WebSocket URL for `user` in `room`, on node `node`.
    pub fn ws_url_on(&self, user: &str, room: &str, node: usize) -> String {
        let addr = self.node_addr(node);
        match self.kind {
            Kind::ChatEngine => {
                let user = chat_engine::protocol::UserId::parse(user).expect("user id");
                let auth = chat_engine::config::AuthConfig {
                    jwt_secret: JWT_SECRET.into(),
                    ..Default::default()
                };
                let token = chat_engine::auth::issue_token(&auth, &user, Duration::from_secs(3600))
                    .expect("token");
                format!("ws://{addr}/v1/ws?token={token}")
            }
            Kind::Baseline => format!("ws://{addr}/room/{room}"),
        }
    }

    /// Creates `room` owned by its first member and adds the others (chat-engine only).
    pub fn create_room(&self, agent: &ureq::Agent, room: &str, members: &[String]) {
        if self.kind == Kind::Baseline {
            return;
        }
        let put = |path: String, body: String| {
            let response = agent
                .put(format!("http://{}{path}", self.addr))
                .header("Authorization", format!("Bearer {API_KEY}"))
                .header("Content-Type", "application/json")
                .send(body)
                .expect("REST call");
            assert!(
                response.status().is_success(),
                "{path}: {}",
                response.status()
            );
        };
        put(
            format!("/v1/rooms/{room}"),
            format!(r#"{{"owner_id":"{}"}}"#, members[0]),
        );
        for member in &members[1..] {
            put(format!("/v1/rooms/{room}/members/{member}"), String::new());
        }
    }

    /// One `/metrics` series (chat-engine only), or 0.
    pub fn metric(&self, agent: &ureq::Agent, series: &str) -> f64 {
        let Ok(mut response) = agent.get(format!("http://{}/metrics", self.addr)).call() else {
            return 0.0;
        };
        let text = response.body_mut().read_to_string().unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let peers = self.peers.iter_mut().map(|(child, _, _)| child);
        for child in std::iter::once(&mut self.child)
            .chain(peers)
            .chain(self.redis.as_mut().map(|(child, _)| child))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// User plus system CPU time of a process (all its threads), from `/proc/PID/stat`, whose
/// clock ticks are USER_HZ, 100 per second on Linux.
fn cpu_seconds_of(child: &Child) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // the first, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// A command for `program`, pinned to CPU 0 where possible.
fn pinned(program: &str) -> Command {
    if can_pin() {
        let mut command = Command::new("taskset");
        command.args(["-c", "0", program]);
        command
    } else {
        Command::new(program)
    }
}

/// Starts the server and waits for its `listening on ADDR` line.
fn spawn(mut command: Command) -> (Child, SocketAddr) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start server");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr: SocketAddr = rest.trim().parse().expect("address");
                    let _ = tx.send(addr);
                    sent = true;
                    continue;
                }
            }
            if line.contains("ERROR") || line.contains("WARN") && !line.contains("DEVELOPMENT") {
                eprintln!("server: {line}");
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("server did not start within 60 s");
    (child, addr)
}

/// How long after `started` the server at `addr` first answered `/readyz` with 200.
fn ready_since(addr: SocketAddr, started: Instant) -> Duration {
    let agent = ureq::Agent::new_with_defaults();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        // A request that connects before the server serves waits in the listen backlog and
        // is answered as soon as it does, so the first 200 is timed to within a poll.
        if agent
            .get(format!("http://{addr}/readyz"))
            .call()
            .is_ok_and(|r| r.status() == 200)
        {
            return started.elapsed();
        }
        assert!(Instant::now() < deadline, "not ready after 600 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}
