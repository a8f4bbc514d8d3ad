//! The simulated network: nodes, the links between them and the virtual clock.
//!
//! [`Sim`] owns sans-IO [`Node`]s and moves their datagrams through [`Link`]s. Time is virtual: a
//! step jumps straight to the next event (a datagram arriving or a node timer), so hours of
//! traffic take as long as the protocol code needs to process it.
//!
//! Determinism: the only randomness is one ChaCha8 stream per link, derived from the seed and the
//! link's two addresses ([`derive_rng`]), so adding a node or a link does not perturb the others.
//! Simultaneous events are ordered by the sequence in which they were scheduled (deliveries) and
//! by node id (timers), and maps are only ever looked up, never iterated.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::link::{Fate, Link, LinkConfig, LinkStats};

/// A sans-IO endpoint driven by the simulator (quinn-proto style).
pub trait Node {
    /// A datagram arrived at this node from `from`. The buffer may be modified (decrypted in
    /// place).
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]);

    /// The instant returned by [`Node::poll_timeout`] has passed (may be called spuriously).
    fn handle_timeout(&mut self, now: Instant);

    /// Next datagram(s) to send: writes into `buf` (empty on entry) and returns the destination,
    /// the total length written and the segment size (a GSO batch: several datagrams of
    /// `segment_size`, the last may be shorter). Returns `None` when nothing can be sent now.
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit>;

    /// When [`Node::handle_timeout`] should next be called, if ever.
    fn poll_timeout(&mut self) -> Option<Instant>;

    /// Called after each step so the test's application logic (writing/reading streams) can run.
    fn on_step(&mut self, now: Instant) {
        let _ = now;
    }
}

impl<T: Node + ?Sized> Node for Box<T> {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]) {
        (**self).handle_datagram(now, from, data);
    }

    fn handle_timeout(&mut self, now: Instant) {
        (**self).handle_timeout(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        (**self).poll_transmit(now, buf)
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        (**self).poll_timeout()
    }

    fn on_step(&mut self, now: Instant) {
        (**self).on_step(now);
    }
}

/// What [`Node::poll_transmit`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    /// Total bytes written to the buffer.
    pub size: usize,
    /// With `Some(s)`, the buffer holds `ceil(size / s)` datagrams of `s` bytes, the last one
    /// possibly shorter. With `None`, one datagram of `size` bytes.
    pub segment_size: Option<usize>,
}

/// Index of a node in its [`Sim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

/// Why [`Sim::run_until`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// The `done` predicate returned true.
    Done,
    /// The next event is after the deadline; the clock now reads the deadline.
    Deadline,
    /// No datagram in flight and no node timer armed: nothing will ever happen again.
    Idle,
}

/// Network-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Calls to [`Sim::step`] that processed an event.
    pub steps: u64,
    /// Datagrams handed to nodes.
    pub deliveries: u64,
    /// Calls to [`Node::handle_timeout`].
    pub timeouts: u64,
}

/// If a node's timer keeps firing without virtual time advancing, its `poll_timeout` is stuck in
/// the past; fail loudly rather than spin forever.
const MAX_TIMEOUTS_WITHOUT_PROGRESS: u32 = 1_000_000;

/// Deterministic, seeded, virtual-time network of nodes of type `N`.
///
/// Use one type for all endpoints (or an enum of them, or `Box<dyn Node>`).
pub struct Sim<N> {
    seed: u64,
    epoch: Instant,
    now: Instant,
    nodes: Vec<Slot<N>>,
    node_by_addr: HashMap<SocketAddr, NodeId>,
    links: Vec<Link>,
    link_by_pair: HashMap<(SocketAddr, SocketAddr), usize>,
    default_link: LinkConfig,
    events: BinaryHeap<Delivery>,
    next_seq: u64,
    /// Recycled datagram buffers, so a steady flow allocates nothing per datagram.
    pool: Vec<Vec<u8>>,
    transmit_buf: Vec<u8>,
    /// A node may have changed through [`Sim::node_mut`] or [`Sim::add_node`] since it was last
    /// polled, so its transmit queue and timer must be refreshed before choosing the next event.
    dirty: bool,
    stalled_timeouts: u32,
    stats: SimStats,
}

struct Slot<N> {
    addr: SocketAddr,
    node: N,
    timeout: Option<Instant>,
}

/// A datagram copy in flight. Ordered so that `BinaryHeap` (a max-heap) pops the earliest
/// arrival first, ties broken by scheduling order.
struct Delivery {
    at: Instant,
    seq: u64,
    link: usize,
    data: Vec<u8>,
}

impl PartialEq for Delivery {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Delivery {}

impl PartialOrd for Delivery {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delivery {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// What the next step will do.
#[derive(Debug, Clone, Copy)]
enum Next {
    Deliver(Instant),
    Timeout(Instant, usize),
}

impl Next {
    fn at(self) -> Instant {
        match self {
            Self::Deliver(at) | Self::Timeout(at, _) => at,
        }
    }
}

impl<N: Node> Sim<N> {
    /// An empty network whose clock starts at the current instant.
    pub fn new(seed: u64) -> Self {
        Self::with_epoch(seed, Instant::now())
    }

    /// An empty network whose clock starts at `epoch`.
    pub fn with_epoch(seed: u64, epoch: Instant) -> Self {
        Self {
            seed,
            epoch,
            now: epoch,
            nodes: Vec::new(),
            node_by_addr: HashMap::new(),
            links: Vec::new(),
            link_by_pair: HashMap::new(),
            default_link: LinkConfig::default(),
            events: BinaryHeap::new(),
            next_seq: 0,
            pool: Vec::new(),
            transmit_buf: Vec::with_capacity(64 * 1024),
            dirty: false,
            stalled_timeouts: 0,
            stats: SimStats::default(),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The instant the simulation started at.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since [`Sim::epoch`].
    pub fn elapsed(&self) -> Duration {
        self.now - self.epoch
    }

    /// A random stream for a node or test, derived from this simulation's seed and `label`.
    pub fn rng(&self, label: &[u8]) -> ChaCha8Rng {
        derive_rng(self.seed, label)
    }

    /// Adds a node reachable at `addr`; datagrams it sends come from `addr`.
    ///
    /// # Panics
    /// If another node already has `addr`.
    pub fn add_node(&mut self, addr: SocketAddr, node: N) -> NodeId {
        let id = NodeId(self.nodes.len());
        match self.node_by_addr.entry(addr) {
            Entry::Occupied(_) => panic!("two nodes at {addr}"),
            Entry::Vacant(v) => v.insert(id),
        };
        self.nodes.push(Slot {
            addr,
            node,
            timeout: None,
        });
        self.dirty = true;
        id
    }

    /// # Panics
    /// If `id` is not from this simulation.
    pub fn node(&self, id: NodeId) -> &N {
        &self.nodes[id.0].node
    }

    /// Access to a node between steps (e.g. to write to a stream). The node is polled for
    /// transmits and its timer before the next event is chosen.
    ///
    /// # Panics
    /// If `id` is not from this simulation.
    pub fn node_mut(&mut self, id: NodeId) -> &mut N {
        self.dirty = true;
        &mut self.nodes[id.0].node
    }

    /// # Panics
    /// If `id` is not from this simulation.
    pub fn addr(&self, id: NodeId) -> SocketAddr {
        self.nodes[id.0].addr
    }

    pub fn node_id(&self, addr: SocketAddr) -> Option<NodeId> {
        self.node_by_addr.get(&addr).copied()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Configures the direction `from -> to`. Reconfiguring a link keeps its queue, counters and
    /// random stream.
    pub fn set_link(&mut self, from: SocketAddr, to: SocketAddr, config: LinkConfig) {
        let index = self.link_index(from, to);
        self.links[index].set_config(config);
    }

    /// Configures both directions between `a` and `b` alike.
    pub fn set_path(&mut self, a: SocketAddr, b: SocketAddr, config: LinkConfig) {
        self.set_link(a, b, config.clone());
        self.set_link(b, a, config);
    }

    /// Configuration for directions not given one with [`Sim::set_link`], when first used.
    /// Defaults to [`LinkConfig::default`]: zero delay, unlimited rate, no impairments.
    pub fn set_default_link(&mut self, config: LinkConfig) {
        self.default_link = config;
    }

    /// Counters of the direction `from -> to` (all zero if it never carried anything).
    pub fn link_stats(&self, from: SocketAddr, to: SocketAddr) -> LinkStats {
        self.link_by_pair
            .get(&(from, to))
            .map(|&i| self.links[i].stats)
            .unwrap_or_default()
    }

    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Datagram copies scheduled but not yet delivered.
    pub fn in_flight(&self) -> usize {
        self.events.len()
    }

    /// Processes the next event (a delivery or a node timer), then lets every node run
    /// [`Node::on_step`] and drains its transmits into the links. Returns false, without
    /// advancing time, when nothing is left to do.
    pub fn step(&mut self) -> bool {
        let Some(next) = self.next_event() else {
            return false;
        };
        let at = next.at();
        if at > self.now {
            self.now = at;
            self.stalled_timeouts = 0;
        }
        let now = self.now;
        match next {
            Next::Deliver(_) => self.deliver(),
            Next::Timeout(_, index) => {
                self.stalled_timeouts += 1;
                assert!(
                    self.stalled_timeouts < MAX_TIMEOUTS_WITHOUT_PROGRESS,
                    "node {index} at {}: timer fired {MAX_TIMEOUTS_WITHOUT_PROGRESS} times \
                     without time advancing; poll_timeout is stuck at or before now",
                    self.nodes[index].addr,
                );
                self.stats.timeouts += 1;
                let slot = &mut self.nodes[index];
                slot.timeout = None;
                slot.node.handle_timeout(now);
            }
        }
        self.stats.steps += 1;
        self.service_nodes(true);
        true
    }

    /// Steps until `done` returns true (checked before every step), the next event lies after
    /// `deadline`, or nothing is left to do.
    pub fn run_until(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> RunOutcome {
        loop {
            if done(self) {
                return RunOutcome::Done;
            }
            match self.next_event() {
                None => return RunOutcome::Idle,
                Some(next) if next.at() > deadline => {
                    self.now = self.now.max(deadline);
                    return RunOutcome::Deadline;
                }
                Some(_) => {
                    self.step();
                }
            }
        }
    }

    /// [`Sim::run_until`] with a deadline `duration` after the current time.
    pub fn run_for(
        &mut self,
        duration: Duration,
        done: impl FnMut(&mut Self) -> bool,
    ) -> RunOutcome {
        let deadline = self.now + duration;
        self.run_until(deadline, done)
    }

    /// The next event, after polling nodes changed from outside since the last step.
    fn next_event(&mut self) -> Option<Next> {
        if self.dirty {
            self.service_nodes(false);
        }
        let mut next = self.events.peek().map(|d| Next::Deliver(d.at));
        for (index, slot) in self.nodes.iter().enumerate() {
            let Some(timeout) = slot.timeout else {
                continue;
            };
            // Strictly earlier: a delivery at the same instant as a timer goes first, and among
            // timers the lowest node id.
            if next.is_none_or(|n| timeout < n.at()) {
                next = Some(Next::Timeout(timeout, index));
            }
        }
        next
    }

    fn deliver(&mut self) {
        let Some(Delivery { link, mut data, .. }) = self.events.pop() else {
            return;
        };
        let (from, to) = (self.links[link].from, self.links[link].to);
        match self.node_by_addr.get(&to) {
            Some(&NodeId(index)) => {
                self.links[link].stats.delivered.datagrams += 1;
                self.links[link].stats.delivered.bytes += data.len() as u64;
                self.stats.deliveries += 1;
                self.nodes[index]
                    .node
                    .handle_datagram(self.now, from, &mut data);
            }
            None => {
                self.links[link].stats.unroutable.datagrams += 1;
                self.links[link].stats.unroutable.bytes += data.len() as u64;
            }
        }
        self.recycle(data);
    }

    /// Runs `on_step` (if `step`), drains transmits and refreshes the timer of every node.
    fn service_nodes(&mut self, step: bool) {
        self.dirty = false;
        let now = self.now;
        for index in 0..self.nodes.len() {
            if step {
                self.nodes[index].node.on_step(now);
            }
            loop {
                let mut buf = std::mem::take(&mut self.transmit_buf);
                buf.clear();
                let transmit = self.nodes[index].node.poll_transmit(now, &mut buf);
                if let Some(transmit) = transmit {
                    let from = self.nodes[index].addr;
                    self.send(from, transmit, &buf);
                }
                self.transmit_buf = buf;
                if transmit.is_none() {
                    break;
                }
            }
            let slot = &mut self.nodes[index];
            slot.timeout = slot.node.poll_timeout();
        }
    }

    /// Splits a (GSO) transmit into datagrams and offers each to the link.
    fn send(&mut self, from: SocketAddr, transmit: Transmit, buf: &[u8]) {
        assert!(
            transmit.size <= buf.len(),
            "node at {from} claims a {}-byte transmit but wrote {} bytes",
            transmit.size,
            buf.len()
        );
        let payload = &buf[..transmit.size];
        let link = self.link_index(from, transmit.destination);
        match transmit.segment_size {
            Some(segment) if segment > 0 => {
                for datagram in payload.chunks(segment) {
                    self.offer(link, datagram);
                }
            }
            _ => self.offer(link, payload),
        }
    }

    fn offer(&mut self, link: usize, datagram: &[u8]) {
        let mut data = self.pool.pop().unwrap_or_default();
        data.clear();
        data.extend_from_slice(datagram);
        let Fate { arrival, duplicate } = self.links[link].offer(self.now, &mut data);
        if let Some(at) = duplicate {
            let mut copy = self.pool.pop().unwrap_or_default();
            copy.clear();
            copy.extend_from_slice(&data);
            self.schedule(at, link, copy);
        }
        match arrival {
            Some(at) => self.schedule(at, link, data),
            None => self.recycle(data),
        }
    }

    fn schedule(&mut self, at: Instant, link: usize, data: Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.events.push(Delivery {
            at,
            seq,
            link,
            data,
        });
    }

    fn recycle(&mut self, data: Vec<u8>) {
        // Bounded so a burst does not pin its peak memory for the rest of the run.
        if self.pool.len() < 4096 {
            self.pool.push(data);
        }
    }

    fn link_index(&mut self, from: SocketAddr, to: SocketAddr) -> usize {
        if let Some(&index) = self.link_by_pair.get(&(from, to)) {
            return index;
        }
        let index = self.links.len();
        let rng = derive_rng(self.seed, &link_label(from, to));
        self.links.push(Link::new(
            from,
            to,
            self.default_link.clone(),
            rng,
            self.now,
        ));
        self.link_by_pair.insert((from, to), index);
        index
    }
}

impl<N> fmt::Debug for Sim<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.seed)
            .field("elapsed", &(self.now - self.epoch))
            .field("nodes", &self.nodes.len())
            .field("links", &self.links.len())
            .field("in_flight", &self.events.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A ChaCha8 stream determined by `seed` and `label` only.
///
/// The 256-bit key is FNV-1a over the label, keyed by the seed, expanded with SplitMix64: not
/// cryptographic, just a stable, platform-independent way to give every consumer its own stream.
pub fn derive_rng(seed: u64, label: &[u8]) -> ChaCha8Rng {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64 ^ splitmix64(&mut seed.clone());
    for &byte in label {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut state = hash ^ seed.rotate_left(32);
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        chunk.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Canonical bytes of a link's two endpoints, for [`derive_rng`].
fn link_label(from: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let mut label = b"link".to_vec();
    for addr in [from, to] {
        match addr.ip() {
            IpAddr::V4(ip) => {
                label.push(4);
                label.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                label.push(6);
                label.extend_from_slice(&ip.octets());
            }
        }
        label.extend_from_slice(&addr.port().to_be_bytes());
    }
    label
}

#[cfg(test)]
mod tests {
    use rand_core::RngCore;

    use super::*;

    #[test]
    fn derived_streams_are_stable_and_distinct() {
        let a = SocketAddr::from(([10, 0, 0, 1], 1));
        let b = SocketAddr::from(([10, 0, 0, 2], 1));
        let mut ab = derive_rng(1, &link_label(a, b));
        let mut ab2 = derive_rng(1, &link_label(a, b));
        let mut ba = derive_rng(1, &link_label(b, a));
        let mut ab_other_seed = derive_rng(2, &link_label(a, b));
        let x = ab.next_u64();
        assert_eq!(x, ab2.next_u64());
        assert_ne!(x, ba.next_u64());
        assert_ne!(x, ab_other_seed.next_u64());
    }

    #[test]
    fn deliveries_pop_earliest_then_fifo() {
        let t0 = Instant::now();
        let mut heap = BinaryHeap::new();
        let ms = Duration::from_millis;
        for (seq, at) in [(0, ms(5)), (1, ms(1)), (2, ms(5)), (3, ms(1))] {
            heap.push(Delivery {
                at: t0 + at,
                seq,
                link: 0,
                data: Vec::new(),
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|d| d.seq)).collect();
        assert_eq!(order, [1, 3, 0, 2]);
    }
}
