//! Trivial nodes for testing the simulator itself: a paced sender of numbered datagrams and a
//! sink that logs what arrives (optionally echoing it back).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use engine_sim::{LinkConfig, Node, NodeId, Sim, Transmit};

/// XORed into the trailing copy of the sequence number so that any single flipped bit shows.
const MAGIC: u64 = 0x5a5a_1234_dead_beef;
const FILL: u8 = 0xa5;
/// Smallest datagram the test peer can number and check.
pub const MIN_SIZE: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// `None` if the datagram was corrupted.
    pub seq: Option<u64>,
    pub at: Instant,
    pub len: usize,
    pub from: SocketAddr,
}

/// Sends `remaining` datagrams of `size` bytes to `dest`, one every `interval` (or `gso`
/// datagrams per transmit), and logs everything it receives.
#[derive(Debug)]
pub struct Peer {
    pub dest: Option<SocketAddr>,
    pub interval: Duration,
    pub size: usize,
    pub remaining: u64,
    /// Datagrams per transmit; the last one of a batch is `size / 2` bytes if `gso > 1`.
    pub gso: usize,
    next_send: Instant,
    next_seq: u64,
    pub send_times: Vec<Instant>,
    pub arrivals: Vec<Arrival>,
    pub echo: bool,
    echo_queue: VecDeque<(SocketAddr, Vec<u8>)>,
    pub steps: u64,
}

impl Peer {
    pub fn sink() -> Self {
        Self {
            dest: None,
            interval: Duration::ZERO,
            size: 0,
            remaining: 0,
            gso: 1,
            next_send: Instant::now(),
            next_seq: 0,
            send_times: Vec::new(),
            arrivals: Vec::new(),
            echo: false,
            echo_queue: VecDeque::new(),
            steps: 0,
        }
    }

    pub fn echo() -> Self {
        Self {
            echo: true,
            ..Self::sink()
        }
    }

    pub fn sender(
        start: Instant,
        dest: SocketAddr,
        count: u64,
        interval: Duration,
        size: usize,
    ) -> Self {
        assert!(size >= MIN_SIZE);
        Self {
            dest: Some(dest),
            interval,
            size,
            remaining: count,
            next_send: start,
            ..Self::sink()
        }
    }

    fn write_datagram(&mut self, now: Instant, buf: &mut Vec<u8>, size: usize) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.send_times.push(now);
        let start = buf.len();
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.resize(start + size - 8, FILL);
        buf.extend_from_slice(&(seq ^ MAGIC).to_le_bytes());
    }

    /// Sequence numbers of intact arrivals, in arrival order.
    pub fn seqs(&self) -> Vec<u64> {
        self.arrivals.iter().filter_map(|a| a.seq).collect()
    }
}

fn check(data: &[u8]) -> Option<u64> {
    let len = data.len();
    if len < MIN_SIZE {
        return None;
    }
    let head = u64::from_le_bytes(data[..8].try_into().ok()?);
    let tail = u64::from_le_bytes(data[len - 8..].try_into().ok()?);
    // Compare against a block of fill bytes (memcmp) rather than byte by byte.
    static FILLED: [u8; 2048] = [FILL; 2048];
    let middle = &data[8..len - 8];
    let filled = middle
        .chunks(FILLED.len())
        .all(|chunk| chunk == &FILLED[..chunk.len()]);
    (head ^ MAGIC == tail && filled).then_some(head)
}

impl Node for Peer {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]) {
        self.arrivals.push(Arrival {
            seq: check(data),
            at: now,
            len: data.len(),
            from,
        });
        if self.echo {
            self.echo_queue.push_back((from, data.to_vec()));
        }
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if let Some((destination, data)) = self.echo_queue.pop_front() {
            buf.extend_from_slice(&data);
            return Some(Transmit {
                destination,
                size: data.len(),
                segment_size: None,
            });
        }
        let destination = self.dest?;
        if self.remaining == 0 || now < self.next_send {
            return None;
        }
        let batch = (self.gso as u64).min(self.remaining) as usize;
        for i in 0..batch {
            let size = if self.gso > 1 && i == batch - 1 {
                self.size / 2
            } else {
                self.size
            };
            self.write_datagram(now, buf, size.max(MIN_SIZE));
        }
        self.remaining -= batch as u64;
        self.next_send += self.interval;
        Some(Transmit {
            destination,
            size: buf.len(),
            segment_size: (self.gso > 1).then_some(self.size),
        })
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        (self.remaining > 0).then_some(self.next_send)
    }

    fn on_step(&mut self, _now: Instant) {
        self.steps += 1;
    }
}

pub fn addr(host: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, host], 4433))
}

/// One sender at `addr(1)` blasting `count` datagrams of `size` bytes every `interval` to a sink
/// at `addr(2)` over `config`, run until idle.
pub fn one_way(
    seed: u64,
    config: LinkConfig,
    count: u64,
    interval: Duration,
    size: usize,
) -> (Sim<Peer>, NodeId, NodeId) {
    let mut sim = Sim::new(seed);
    sim.set_link(addr(1), addr(2), config);
    let start = sim.now();
    let tx = sim.add_node(addr(1), Peer::sender(start, addr(2), count, interval, size));
    let rx = sim.add_node(addr(2), Peer::sink());
    let deadline = start + Duration::from_secs(100_000);
    let outcome = sim.run_until(deadline, |_| false);
    assert_eq!(outcome, engine_sim::RunOutcome::Idle);
    (sim, tx, rx)
}
