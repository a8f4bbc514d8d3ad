//! Sequences of stream operations on both ends of a live session (open, write, read, finish,
//! reset, close) interleaved with network manipulation (deliver, drop, duplicate, reorder) and
//! clock advances. Whatever a stream yields to a reader must be exactly a prefix of what the
//! other end wrote on it, and a FIN only ever comes after all of it. Nothing may panic.
//!
//! `FUZZ_DEBUG=1` prints each decoded operation (for reproducing a crash).

#![no_main]

mod common;

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use common::{Net, NetOp};
use engine_proto::SessionEvent;
use engine_proto::mux::{StreamError, StreamEvent};
use engine_proto::wire::StreamId;
use libfuzzer_sys::fuzz_target;

/// Operations per input; bounds the time one input takes.
const MAX_OPS: usize = 256;
/// Largest single write.
const MAX_WRITE: usize = 16 * 1024;

#[derive(Arbitrary, Debug)]
enum Op {
    Net(NetOp),
    Open {
        side: bool,
        map_id: u32,
    },
    Write {
        side: bool,
        stream: u8,
        len: u16,
    },
    Read {
        side: bool,
        stream: u8,
        max: u16,
    },
    /// Read every stream the side knows until nothing is left.
    ReadAll {
        side: bool,
    },
    Finish {
        side: bool,
        stream: u8,
    },
    Reset {
        side: bool,
        stream: u8,
        code: u16,
    },
    Close {
        side: bool,
        code: u8,
    },
}

/// What one end wrote on one stream: its bytes are [`pattern`], so only the length is kept.
#[derive(Debug, Default)]
struct Sent {
    len: u64,
    finished: bool,
}

/// What one end read from one stream.
#[derive(Debug, Default)]
struct Received {
    len: u64,
    fin: bool,
}

#[derive(Default)]
struct Model {
    /// Streams each side can name (opened itself, or announced by the peer).
    known: [Vec<StreamId>; 2],
    /// Keyed by (writing side, stream).
    sent: BTreeMap<(usize, StreamId), Sent>,
    /// Keyed by (reading side, stream).
    received: BTreeMap<(usize, StreamId), Received>,
}

/// The byte at `offset` of what `side` writes on `id`: position dependent and different per
/// stream and direction, so a byte out of place or from another stream is noticed.
fn pattern(side: usize, id: StreamId, offset: u64) -> u8 {
    let salt = (id.0 << 1 | side as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
    ((offset ^ salt).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

impl Model {
    fn pick(&self, side: usize, stream: u8) -> StreamId {
        let known = &self.known[side];
        if known.is_empty() {
            // Nothing open: exercise the error paths with an arbitrary id.
            StreamId(u64::from(stream))
        } else {
            known[usize::from(stream) % known.len()]
        }
    }

    fn learn(&mut self, net: &mut Net) {
        for side in 0..2 {
            for event in std::mem::take(&mut net.events[side]) {
                if let SessionEvent::Stream(StreamEvent::Opened { id, .. }) = event.kind
                    && !self.known[side].contains(&id)
                {
                    self.known[side].push(id);
                }
            }
        }
    }

    /// Reads up to `max` bytes of `id` at `side`; returns whether anything (data or FIN) came.
    fn read(&mut self, net: &mut Net, side: usize, id: StreamId, max: usize) -> bool {
        let Some(session) = net.session_mut(side) else {
            return false;
        };
        let mut buf = vec![0u8; max];
        let outcome = match session.read(id, &mut buf) {
            Ok(outcome) => outcome,
            Err(StreamError::WouldBlock) => return false,
            Err(_) => return false,
        };
        assert!(outcome.len <= max);
        let writer = 1 - side;
        let sent = self.sent.get(&(writer, id));
        let received = self.received.entry((side, id)).or_default();
        let written = sent.map_or(0, |s| s.len);
        for (i, &b) in buf[..outcome.len].iter().enumerate() {
            let offset = received.len + i as u64;
            assert!(
                offset < written,
                "{id:?}: read byte {offset} of {written} written"
            );
            assert_eq!(
                b,
                pattern(writer, id, offset),
                "{id:?}: byte {offset} differs from what was written"
            );
        }
        received.len += outcome.len as u64;
        if outcome.fin {
            assert!(
                sent.is_some_and(|s| s.finished),
                "{id:?}: FIN read but the writer never finished"
            );
            assert_eq!(received.len, written, "{id:?}: FIN before all data");
            received.fin = true;
        } else {
            assert!(!received.fin, "{id:?}: data after FIN");
        }
        outcome.len > 0 || outcome.fin
    }

    fn apply(&mut self, net: &mut Net, op: Op) {
        let now = net.now;
        match op {
            Op::Net(op) => net.apply(op),
            Op::Open { side, map_id } => {
                let side = usize::from(side);
                if let Some(session) = net.session_mut(side)
                    && let Ok(id) = session.open_stream(map_id)
                {
                    assert!(!self.known[side].contains(&id), "{id:?} opened twice");
                    self.known[side].push(id);
                }
            }
            Op::Write { side, stream, len } => {
                let side = usize::from(side);
                let id = self.pick(side, stream);
                let sent = self.sent.entry((side, id)).or_default();
                let data: Vec<u8> = (0..usize::from(len) % (MAX_WRITE + 1))
                    .map(|i| pattern(side, id, sent.len + i as u64))
                    .collect();
                if let Some(session) = net.session_mut(side)
                    && let Ok(n) = session.write(id, &data)
                {
                    assert!(n <= data.len());
                    assert!(!sent.finished || n == 0, "{id:?}: write after finish");
                    sent.len += n as u64;
                }
            }
            Op::Read { side, stream, max } => {
                let side = usize::from(side);
                let id = self.pick(side, stream);
                self.read(net, side, id, usize::from(max) % (MAX_WRITE + 1));
            }
            Op::ReadAll { side } => {
                let side = usize::from(side);
                for id in self.known[side].clone() {
                    for _ in 0..1024 {
                        if !self.read(net, side, id, MAX_WRITE) {
                            break;
                        }
                    }
                }
            }
            Op::Finish { side, stream } => {
                let side = usize::from(side);
                let id = self.pick(side, stream);
                if let Some(session) = net.session_mut(side)
                    && session.finish(id).is_ok()
                {
                    self.sent.entry((side, id)).or_default().finished = true;
                }
            }
            Op::Reset { side, stream, code } => {
                let side = usize::from(side);
                let id = self.pick(side, stream);
                if let Some(session) = net.session_mut(side) {
                    let _ = session.reset(id, u64::from(code));
                }
            }
            Op::Close { side, code } => {
                if let Some(session) = net.session_mut(usize::from(side)) {
                    session.close(now, u64::from(code), b"fuzz");
                }
            }
        }
        net.drain();
        self.learn(net);
        net.check();
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    // Small buffers and stream limits, so that full windows, refused streams and Writable
    // events are within reach of short inputs.
    let mut net = Net::new(false, |c| {
        c.session.mux.send_buffer = 96 * 1024;
        c.session.mux.max_incoming_streams = 8;
    });
    let mut model = Model::default();
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        if std::env::var_os("FUZZ_DEBUG").is_some() {
            eprintln!("{op:?}");
        }
        model.apply(&mut net, op);
    }
});
