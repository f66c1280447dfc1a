//! Real `redis-server` processes for the cluster tests: a single persistent server, or a
//! Redis Cluster of several masters, each on a free loopback port in a temporary directory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether redis-server can run here (see [`super::tool_available`]).
pub fn available(test: &str) -> bool {
    let mut probe = Command::new("redis-server");
    probe.arg("--version");
    super::tool_available(test, "redis-server", probe)
}

/// A free loopback port (free when asked; the server binds it right after).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().unwrap().port()
}

/// One redis-server process. Its data (AOF, fsync on every write) outlives the process, so a
/// restart on the same port finds everything it acknowledged.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    cluster: bool,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_as(false)
    }

    fn start_as(cluster: bool) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            cluster,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and directory, and waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "redis-server {} still runs",
            self.port
        );
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--protected-mode", "no", "--daemonize", "no"]);
        if self.cluster {
            command.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while command_reply(self.port, "PING").as_deref() != Some("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not answer PING within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no chance to write anything more.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// The first line of Redis's reply to an inline command, or `None` if it cannot connect.
pub fn command_reply(port: u16, command: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).ok()? == 1 && byte[0] != b'\n' {
        reply.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&reply).trim_end().to_owned())
}

/// How many times Redis has run scripts (`EVAL` and `EVALSHA`) since it started or since
/// `CONFIG RESETSTAT`.
pub fn script_calls(port: u16) -> u64 {
    command_calls(port, &["eval", "evalsha"])
}

/// How many times Redis has run any of `commands` (lower case) since it started or since
/// `CONFIG RESETSTAT`.
pub fn command_calls(port: u16, commands: &[&str]) -> u64 {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| {
            commands
                .iter()
                .any(|command| line.starts_with(&format!("cmdstat_{command}:")))
        })
        .filter_map(|line| {
            line.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// A Redis Cluster of `masters` masters and no replicas, made with
/// `redis-cli --cluster create`.
pub struct RedisCluster {
    pub masters: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> RedisCluster {
        let masters: Vec<RedisServer> = (0..masters).map(|_| RedisServer::start_as(true)).collect();
        let addresses: Vec<String> = masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for master in &masters {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &master.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli cluster info");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the Redis Cluster did not become ok"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { masters }
    }

    /// The seed node chat-engine is given.
    pub fn url(&self) -> String {
        self.masters[0].url()
    }
}
