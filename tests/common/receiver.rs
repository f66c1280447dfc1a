//! A real HTTP server for tests: an HTTP/1.1 server on loopback that records every request
//! and answers as the test says (2xx, 500, a redirect, or never), with the body the test gives: the
//! receiver of webhook tests, and the JWKS endpoint of auth tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    /// Reads the request and never answers.
    Hang,
    /// 303 See Other to [`ELSEWHERE`], which answers every request 200 (counted apart).
    Redirect,
}

/// Where [`Answer::Redirect`] sends clients.
const ELSEWHERE: &str = "/elsewhere";

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub signature: Option<String>,
    pub body: Vec<u8>,
    pub answered: Answer,
}

impl Received {
    pub fn events(&self) -> Vec<Value> {
        let body: Value = serde_json::from_slice(&self.body).expect("a JSON body");
        body["events"].as_array().expect("events").clone()
    }
}

#[derive(Default)]
struct Shared {
    requests: Vec<Received>,
    /// Requests that followed a redirect to [`ELSEWHERE`].
    followed: usize,
    /// The body of every answer (JSON).
    reply: Vec<u8>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    shared: Arc<Mutex<Shared>>,
}

impl Receiver {
    /// Listens on a free loopback port.
    pub fn start() -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap())
    }

    /// Listens on `addr` (a port a stopped receiver had, to bring "the endpoint" back).
    pub fn start_on(addr: SocketAddr) -> Receiver {
        let listener = TcpListener::bind(addr).expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(Answer::Status(200)));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (a, s) = (answer.clone(), shared.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (a, s) = (a.clone(), s.clone());
                std::thread::spawn(move || serve(stream, &a, &s));
            }
        });
        Receiver {
            addr,
            answer,
            shared,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    pub fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Answers with `body` (JSON) from now on.
    pub fn reply_with(&self, body: &str) {
        self.shared.lock().unwrap().reply = body.as_bytes().to_vec();
    }

    pub fn requests(&self) -> Vec<Received> {
        self.shared.lock().unwrap().requests.clone()
    }

    /// How many requests followed a redirect.
    pub fn followed(&self) -> usize {
        self.shared.lock().unwrap().followed
    }

    /// Every event of the requests it acknowledged with a 2xx, in arrival order.
    pub fn acknowledged(&self) -> Vec<Value> {
        let requests = self.requests();
        let ok = |r: &&Received| matches!(r.answered, Answer::Status(s) if (200..300).contains(&s));
        requests
            .iter()
            .filter(ok)
            .flat_map(Received::events)
            .collect()
    }

    /// Waits until `done` holds for the acknowledged events (10 s at most).
    #[track_caller]
    pub fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.acknowledged();
            if done(&events) {
                return events;
            }
            assert!(Instant::now() < deadline, "{what}; got {events:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Serves one connection: keep-alive requests until it closes.
fn serve(stream: TcpStream, answer: &Mutex<Answer>, shared: &Mutex<Shared>) {
    let mut writer = stream.try_clone().expect("clone the stream");
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0;
        let mut signature = None;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let redirected = line.split_whitespace().nth(1) == Some(ELSEWHERE);
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "x-chat-engine-signature" => signature = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if redirected {
            shared.lock().unwrap().followed += 1;
            if writer
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .is_err()
            {
                return;
            }
            continue;
        }
        let answered = *answer.lock().unwrap();
        let reply = {
            let mut shared = shared.lock().unwrap();
            shared.requests.push(Received {
                signature,
                body,
                answered,
            });
            shared.reply.clone()
        };
        match answered {
            Answer::Status(status) => {
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n",
                    reply.len()
                );
                if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&reply).is_err() {
                    return;
                }
            }
            Answer::Hang => {
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
            Answer::Redirect => {
                let head = format!(
                    "HTTP/1.1 303 See Other\r\nLocation: {ELSEWHERE}\r\nContent-Length: 0\r\n\r\n"
                );
                if writer.write_all(head.as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
}
