//! A UDP relay that impairs what crosses it, for plain-RTP tests on loopback (`tc netem` is not
//! in this kernel): senders send to [`Relay::addr`], the relay forwards each datagram to the
//! target after a delay drawn from `delay` (so datagrams overtake each other: jitter and
//! reordering), drops a share (random or in bursts), duplicates a share. What the target sends
//! back (RTCP feedback) goes, unimpaired, to the last sender. Seeded: a run is repeatable.

use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the path does to each datagram.
#[derive(Debug, Clone)]
pub struct Impairment {
    pub seed: u64,
    /// Delay of each datagram, drawn uniformly from this range.
    pub delay: (Duration, Duration),
    /// Share of datagrams dropped, independently.
    pub loss: f64,
    /// Once a drop happens, this share of the next datagrams is dropped too (a burst).
    pub burst: f64,
    /// Share of datagrams sent twice.
    pub duplicate: f64,
    /// Delay of every datagram back from the target (a round trip is `delay` + this).
    pub reverse_delay: Duration,
}

impl Default for Impairment {
    fn default() -> Self {
        Self {
            seed: 1,
            delay: (Duration::ZERO, Duration::ZERO),
            loss: 0.0,
            burst: 0.0,
            duplicate: 0.0,
            reverse_delay: Duration::ZERO,
        }
    }
}

/// What crossed the relay, toward the target.
#[derive(Debug, Default)]
pub struct RelayCounts {
    pub received: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    /// Datagrams that left after one sent later (reordered).
    pub overtaken: AtomicU64,
}

pub struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub counts: Arc<RelayCounts>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

struct Due {
    at: Instant,
    order: u64,
    data: Vec<u8>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    /// The earliest due first (BinaryHeap is a max-heap).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// xorshift64*: small, seeded, good enough to draw delays and losses.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Relay {
    /// A relay on 127.0.0.1 forwarding to `target` through `impairment`.
    pub fn start(target: SocketAddr, impairment: Impairment) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").expect("relay socket");
        front.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        // Toward the target from a socket of its own, so the target latches to one address and
        // its answers come back here.
        let back = UdpSocket::bind("127.0.0.1:0").expect("relay socket");
        back.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = front.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(RelayCounts::default());
        let queue = Arc::new((Mutex::new(BinaryHeap::<Due>::new()), Condvar::new()));
        let last_sender = Arc::new(Mutex::new(None::<SocketAddr>));
        let mut threads = Vec::new();
        // Receive from senders, decide each datagram's fate, queue it at its due time.
        {
            let (stop, counts, queue, last_sender) = (stop.clone(), counts.clone(), queue.clone(), last_sender.clone());
            let front = front.try_clone().unwrap();
            threads.push(std::thread::spawn(move || {
                let mut rng = Rng(impairment.seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
                let mut in_burst = false;
                let mut order = 0u64;
                let mut buf = vec![0u8; 65_536];
                let span = impairment.delay.1.saturating_sub(impairment.delay.0);
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    *last_sender.lock().unwrap() = Some(from);
                    counts.received.fetch_add(1, Ordering::Relaxed);
                    let drop = if in_burst {
                        rng.unit() < impairment.burst
                    } else {
                        rng.unit() < impairment.loss
                    };
                    in_burst = drop && impairment.burst > 0.0;
                    if drop {
                        counts.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let copies = if rng.unit() < impairment.duplicate { 2 } else { 1 };
                    if copies == 2 {
                        counts.duplicated.fetch_add(1, Ordering::Relaxed);
                    }
                    let now = Instant::now();
                    let (lock, wake) = &*queue;
                    let mut q = lock.lock().unwrap();
                    for _ in 0..copies {
                        let delay = impairment.delay.0 + span.mul_f64(rng.unit());
                        order += 1;
                        q.push(Due {
                            at: now + delay,
                            order,
                            data: buf[..len].to_vec(),
                        });
                    }
                    wake.notify_one();
                }
            }));
        }
        // Send each datagram when due.
        {
            let (stop, counts, queue) = (stop.clone(), counts.clone(), queue.clone());
            let back = back.try_clone().unwrap();
            threads.push(std::thread::spawn(move || {
                let (lock, wake) = &*queue;
                let mut last_order = 0u64;
                let mut q = lock.lock().unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    match q.peek() {
                        Some(due) if due.at <= now => {
                            let due = q.pop().expect("peeked");
                            if due.order < last_order {
                                counts.overtaken.fetch_add(1, Ordering::Relaxed);
                            }
                            last_order = last_order.max(due.order);
                            let _ = back.send_to(&due.data, target);
                        }
                        Some(due) => {
                            let wait = due.at - now;
                            q = wake.wait_timeout(q, wait).unwrap().0;
                        }
                        None => q = wake.wait_timeout(q, Duration::from_millis(50)).unwrap().0,
                    }
                }
            }));
        }
        // Answers from the target back to the sender: delayed by `reverse_delay`, never lost.
        {
            let reverse_delay = impairment.reverse_delay;
            let returns: Arc<(Mutex<DelayQueue>, Condvar)> = Arc::default();
            let (stop_in, queued) = (stop.clone(), returns.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop_in.load(Ordering::Relaxed) {
                    let Ok((len, _)) = back.recv_from(&mut buf) else {
                        continue;
                    };
                    let (lock, wake) = &*queued;
                    lock.lock()
                        .unwrap()
                        .push_back((Instant::now() + reverse_delay, buf[..len].to_vec()));
                    wake.notify_one();
                }
            }));
            let stop_out = stop.clone();
            threads.push(std::thread::spawn(move || {
                let (lock, wake) = &*returns;
                let mut q = lock.lock().unwrap();
                while !stop_out.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    match q.front() {
                        Some((at, _)) if *at <= now => {
                            let (_, data) = q.pop_front().expect("peeked");
                            if let Some(to) = *last_sender.lock().unwrap() {
                                let _ = front.send_to(&data, to);
                            }
                        }
                        Some((at, _)) => {
                            let wait = *at - now;
                            q = wake.wait_timeout(q, wait).unwrap().0;
                        }
                        None => q = wake.wait_timeout(q, Duration::from_millis(50)).unwrap().0,
                    }
                }
            }));
        }
        Relay {
            addr,
            stop,
            counts,
            threads,
        }
    }

    /// Where senders send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_are_delayed_reordered_dropped_and_duplicated_as_seeded() {
        let target = UdpSocket::bind("127.0.0.1:0").unwrap();
        target.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let relay = Relay::start(
            target.local_addr().unwrap(),
            Impairment {
                seed: 7,
                delay: (Duration::ZERO, Duration::from_millis(60)),
                loss: 0.1,
                duplicate: 0.05,
                ..Default::default()
            },
        );
        let reader_socket = target.try_clone().unwrap();
        // Read while they come (a socket buffer holds only so many small datagrams).
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            let mut relay_back = None;
            while let Ok((_, from)) = reader_socket.recv_from(&mut buf) {
                got.push(u16::from_be_bytes([buf[0], buf[1]]));
                relay_back = Some(from);
            }
            (got, relay_back)
        });
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0u16..300 {
            sender.send_to(&i.to_be_bytes(), relay.addr()).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        let (got, relay_back) = reader.join().unwrap();
        let mut buf = [0u8; 16];
        let c = &relay.counts;
        let dropped = c.dropped.load(Ordering::Relaxed);
        let duplicated = c.duplicated.load(Ordering::Relaxed);
        assert!((10..60).contains(&dropped), "{dropped} dropped of 300");
        assert!(duplicated > 0);
        assert_eq!(got.len() as u64, 300 - dropped + duplicated);
        assert!(got.windows(2).any(|w| w[1] < w[0]), "reordered");
        // Answers go back to the sender.
        sender.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        target.send_to(b"pli", relay_back.unwrap()).unwrap();
        let n = sender.recv(&mut buf).expect("the answer reaches the sender");
        assert_eq!(&buf[..n], b"pli");
    }
}

/// Datagrams waiting for their time to be sent, in order.
type DelayQueue = std::collections::VecDeque<(Instant, Vec<u8>)>;
