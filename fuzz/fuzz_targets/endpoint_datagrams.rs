//! Endpoint datagram handling: after a real handshake between two endpoints, the fuzzer
//! interleaves network manipulation, timer advances and application calls with datagrams of its
//! own making, delivered to either endpoint from any of three addresses:
//!
//! * raw bytes,
//! * captured genuine datagrams (both handshake messages and the latest 32 others), damaged
//!   (bit flips, truncation, appended bytes) or replayed,
//! * packets sealed for the live session with its real keys: built with this build's null
//!   cipher, they authenticate, so fuzzer-chosen frames (raw or structured) reach the session's
//!   frame handlers.
//!
//! Both endpoints run fixed FEC (4 data + 2 parity, interleave 2), so parity packets are
//! captured, damaged and replayed too, and reach the recovery code.
//!
//! Nothing may panic, every datagram an endpoint sends must be well formed (see `common`), and
//! the endpoint's counters and session limit must hold.
//!
//! `FUZZ_DEBUG=1` prints each decoded operation (for reproducing a crash).

#![no_main]

mod common;

use arbitrary::{Arbitrary, Unstructured};
use common::{Forger, Net, NetOp, addr};
use engine_proto::wire::{AckFrame, Frame, StreamFrameHeader, StreamId, WindowTarget, Writer};
use engine_proto::{FecConfig, FecMode};
use libfuzzer_sys::fuzz_target;

/// Operations per input; bounds the time one input takes.
const MAX_OPS: usize = 128;
/// The largest value a varint (hence any integer in a frame) can carry.
const VARINT_MAX: u64 = (1 << 62) - 1;

#[derive(Arbitrary, Debug)]
enum Op {
    Net(NetOp),
    /// Arbitrary bytes as a datagram.
    Raw {
        to: bool,
        from: u8,
        data: Vec<u8>,
    },
    /// A captured genuine datagram, damaged, to its destination (or, `reflect`, to its sender).
    Damage {
        index: u8,
        reflect: bool,
        from: u8,
        flips: Vec<(u16, u8)>,
        truncate: Option<u16>,
        append: Vec<u8>,
    },
    /// A captured genuine datagram again, unchanged.
    Replay {
        index: u8,
        reflect: bool,
        from: u8,
    },
    /// A packet sealed under the session's keys, as `sender` would.
    Forge {
        sender: bool,
        generation: bool,
        pn: Pn,
        from: u8,
        payload: Payload,
    },
    App(AppOp),
}

/// The forged packet's number, relative to what the sender has used so far.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Pn {
    Ahead(u8),
    Behind(u8),
    Exact(u64),
}

#[derive(Arbitrary, Debug)]
enum Payload {
    Raw(Vec<u8>),
    Frames(Vec<FrameSpec>),
}

#[derive(Arbitrary, Debug)]
enum FrameSpec {
    Padding(u8),
    Ping,
    /// Acknowledges the receiver's packets: the largest `back` below its latest, then
    /// (gap, length) pairs downwards.
    Ack {
        back: u8,
        delay_us: u32,
        first: u8,
        ranges: Vec<(u8, u8)>,
    },
    WindowSession(u64),
    WindowStream {
        stream: u16,
        max: u64,
    },
    Open {
        stream: u16,
        map_id: u32,
    },
    Reset {
        stream: u16,
        code: u64,
        final_size: u32,
    },
    Close {
        code: u64,
        reason: Vec<u8>,
    },
    Datagram(Vec<u8>),
    Stream {
        stream: u16,
        offset: u32,
        fin: bool,
        with_len: bool,
        data: Vec<u8>,
    },
}

/// Application calls, so that genuine traffic carries more than PINGs and ACKs.
#[derive(Arbitrary, Debug)]
enum AppOp {
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
    },
    Finish {
        side: bool,
        stream: u8,
    },
    Reset {
        side: bool,
        stream: u8,
        code: u64,
    },
    Datagram {
        side: bool,
        len: u16,
    },
    RecvDatagram {
        side: bool,
    },
    Close {
        side: bool,
        code: u64,
        reason: Vec<u8>,
    },
}

fn from_addr(from: u8, default: usize) -> std::net::SocketAddr {
    match from % 4 {
        0 | 1 => addr(default),
        2 => addr(1 - default),
        _ => addr(2),
    }
}

fn damage(mut data: Vec<u8>, flips: &[(u16, u8)], truncate: Option<u16>, append: &[u8]) -> Vec<u8> {
    if !data.is_empty() {
        for &(at, mask) in flips {
            let i = usize::from(at) % data.len();
            data[i] ^= mask;
        }
    }
    if let Some(len) = truncate {
        data.truncate(usize::from(len));
    }
    data.extend_from_slice(append);
    data
}

/// Encodes `frames` for a packet to endpoint `receiver`. Frames that do not encode are skipped.
fn encode_frames(net: &Net, receiver: usize, frames: &[FrameSpec]) -> Vec<u8> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut w = Writer::new(&mut buf);
    for spec in frames {
        let mut scratch = [0u8; 4096];
        let mut f = Writer::new(&mut scratch);
        let ok = match spec {
            FrameSpec::Padding(n) => (0..=*n).all(|_| Frame::Padding.encode(&mut f).is_ok()),
            FrameSpec::Ping => Frame::Ping.encode(&mut f).is_ok(),
            FrameSpec::Ack {
                back,
                delay_us,
                first,
                ranges,
            } => {
                // The receiver's own packets, as far as the harness saw them.
                let next = net.observers[receiver].next_pn();
                let largest = next.saturating_sub(1 + u64::from(*back));
                let top = largest.saturating_sub(u64::from(*first))..largest + 1;
                let mut low = top.start;
                let mut list = Vec::from([top]);
                for &(gap, len) in ranges {
                    let Some(end) = low.checked_sub(u64::from(gap) + 1) else {
                        break;
                    };
                    let Some(start) = end.checked_sub(u64::from(len) + 1) else {
                        break;
                    };
                    list.push(start..end);
                    low = start;
                }
                AckFrame::encode(&mut f, u64::from(*delay_us), list.into_iter(), 64)
                    .is_ok_and(|n| n > 0)
            }
            FrameSpec::WindowSession(max) => Frame::Window {
                target: WindowTarget::Session,
                max: max & VARINT_MAX,
            }
            .encode(&mut f)
            .is_ok(),
            FrameSpec::WindowStream { stream, max } => Frame::Window {
                target: WindowTarget::Stream(StreamId(u64::from(*stream))),
                max: max & VARINT_MAX,
            }
            .encode(&mut f)
            .is_ok(),
            FrameSpec::Open { stream, map_id } => Frame::Open {
                id: StreamId(u64::from(*stream)),
                map_id: *map_id,
            }
            .encode(&mut f)
            .is_ok(),
            FrameSpec::Reset {
                stream,
                code,
                final_size,
            } => Frame::Reset {
                id: StreamId(u64::from(*stream)),
                error_code: code & VARINT_MAX,
                final_size: u64::from(*final_size),
            }
            .encode(&mut f)
            .is_ok(),
            FrameSpec::Close { code, reason } => Frame::Close {
                error_code: code & VARINT_MAX,
                reason,
            }
            .encode(&mut f)
            .is_ok(),
            FrameSpec::Datagram(data) => Frame::Datagram { data }.encode(&mut f).is_ok(),
            FrameSpec::Stream {
                stream,
                offset,
                fin,
                with_len,
                data,
            } => {
                let header = StreamFrameHeader {
                    id: StreamId(u64::from(*stream)),
                    offset: u64::from(*offset),
                    len: data.len(),
                    fin: *fin,
                    has_len: *with_len,
                };
                header.encode(&mut f).is_ok() && f.bytes(data).is_ok()
            }
        };
        if ok && w.bytes(f.written()).is_err() {
            break;
        }
    }
    let len = w.len();
    buf.truncate(len);
    buf
}

fn app(net: &mut Net, op: &AppOp) {
    let now = net.now;
    let side = |s: &bool| usize::from(*s);
    let stream = |s: &u8| StreamId(u64::from(*s));
    match op {
        AppOp::Open { side: s, map_id } => {
            if let Some(session) = net.session_mut(side(s)) {
                let _ = session.open_stream(*map_id);
            }
        }
        AppOp::Write {
            side: s,
            stream: id,
            len,
        } => {
            if let Some(session) = net.session_mut(side(s)) {
                let data = vec![*id; usize::from(*len)];
                let _ = session.write(stream(id), &data);
            }
        }
        AppOp::Read {
            side: s,
            stream: id,
        } => {
            if let Some(session) = net.session_mut(side(s)) {
                let mut buf = [0u8; 4096];
                while let Ok(outcome) = session.read(stream(id), &mut buf) {
                    assert!(outcome.len <= buf.len());
                    if outcome.len == 0 {
                        break;
                    }
                }
            }
        }
        AppOp::Finish {
            side: s,
            stream: id,
        } => {
            if let Some(session) = net.session_mut(side(s)) {
                let _ = session.finish(stream(id));
            }
        }
        AppOp::Reset {
            side: s,
            stream: id,
            code,
        } => {
            if let Some(session) = net.session_mut(side(s)) {
                let _ = session.reset(stream(id), *code);
            }
        }
        AppOp::Datagram { side: s, len } => {
            if let Some(session) = net.session_mut(side(s)) {
                session.send_datagram(&vec![0xd5; usize::from(*len)]);
            }
        }
        AppOp::RecvDatagram { side: s } => {
            if let Some(session) = net.session_mut(side(s)) {
                while session.recv_datagram().is_some() {}
            }
        }
        AppOp::Close {
            side: s,
            code,
            reason,
        } => {
            if let Some(session) = net.session_mut(side(s)) {
                session.close(now, *code, reason);
            }
        }
    }
}

fn run(net: &mut Net, forger: &mut Forger, op: Op) {
    match op {
        Op::Net(op) => net.apply(op),
        Op::Raw { to, from, mut data } => {
            let to = usize::from(to);
            net.deliver(to, from_addr(from, 1 - to), &mut data);
        }
        Op::Damage {
            index,
            reflect,
            from,
            flips,
            truncate,
            append,
        } => {
            let Some(c) = net.captured(index) else {
                return;
            };
            let to = if reflect { c.sender } else { 1 - c.sender };
            let mut data = damage(c.data, &flips, truncate, &append);
            net.deliver(to, from_addr(from, 1 - to), &mut data);
        }
        Op::Replay {
            index,
            reflect,
            from,
        } => {
            let Some(c) = net.captured(index) else {
                return;
            };
            let to = if reflect { c.sender } else { 1 - c.sender };
            let mut data = c.data;
            net.deliver(to, from_addr(from, 1 - to), &mut data);
        }
        Op::Forge {
            sender,
            generation,
            pn,
            from,
            payload,
        } => {
            let sender = usize::from(sender);
            let receiver = 1 - sender;
            let next = net.observers[sender].next_pn();
            let pn = match pn {
                Pn::Ahead(n) => next + u64::from(n),
                Pn::Behind(n) => next.saturating_sub(1 + u64::from(n)),
                Pn::Exact(n) => n & VARINT_MAX,
            };
            let plain = match payload {
                Payload::Raw(bytes) => bytes,
                Payload::Frames(frames) => encode_frames(net, receiver, &frames),
            };
            let mut packet = forger.seal(net, sender, generation, pn, &plain);
            net.deliver(receiver, from_addr(from, sender), &mut packet);
        }
        Op::App(op) => app(net, &op),
    }
    net.drain();
    net.check();
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut net = Net::new(true, |c| {
        c.session.fec = FecConfig {
            mode: FecMode::Fixed { data: 4, parity: 2 },
            interleave: 2,
        }
    });
    let mut forger = Forger::new(&net);
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        let debug = std::env::var_os("FUZZ_DEBUG").is_some();
        if debug {
            eprintln!("{op:?}");
        }
        run(&mut net, &mut forger, op);
        if debug {
            for i in 0..2 {
                if let Some(s) = net.endpoints[i].session(net.ids[i]) {
                    eprintln!("  endpoint {i}: {:?}", s.stats());
                }
            }
        }
    }
    // Let the dust settle: whatever state the fuzzer left, timers must still work.
    for _ in 0..16 {
        net.step();
    }
    net.check();
});
