//! A webhook receiver for tests: a real HTTP/1.1 server on 127.0.0.1 that records every request
//! and answers 200, or 503 while it is told to be down (for a number of requests, or until told
//! otherwise), so a test can take a receiver down for a while and see everything arrive after.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub status: u16,
}

impl Request {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("a JSON body ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

#[derive(Default)]
struct State {
    /// Requests to answer 503 before answering 200 again.
    fail_next: usize,
    /// Answer 503 to everything until cleared.
    down: bool,
    requests: Vec<Request>,
}

pub struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    /// Listens on 127.0.0.1, port 0.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let state = Arc::new(Mutex::new(State::default()));
        let accepting = state.clone();
        std::thread::Builder::new()
            .name("webhook-receiver".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let state = accepting.clone();
                    std::thread::spawn(move || serve(stream, state));
                }
            })
            .expect("the receiver thread starts");
        Receiver { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/recorder", self.addr)
    }

    /// Answers 503 to everything from now on (`true`), or 200 again (`false`).
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Answers 503 to the next `n` requests.
    pub fn fail_next(&self, n: usize) {
        self.state.lock().unwrap().fail_next = n;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The requests answered 200, in arrival order.
    pub fn accepted(&self) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.status == 200).collect()
    }
}

fn serve(stream: TcpStream, state: Arc<Mutex<State>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    // Keep-alive: one request after the other on the connection.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = {
            let mut state = state.lock().unwrap();
            let status = if state.down {
                503
            } else if state.fail_next > 0 {
                state.fail_next -= 1;
                503
            } else {
                200
            };
            state.requests.push(Request { headers, body, status });
            status
        };
        let reason = if status == 200 { "OK" } else { "Service Unavailable" };
        if writer
            .write_all(format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n\r\n").as_bytes())
            .is_err()
        {
            return;
        }
    }
}
