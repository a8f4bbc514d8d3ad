//! The Noise handshake: any bytes offered as message 1 to a responder or as message 2 to an
//! initiator must be rejected (or, if they are the genuine message, accepted) without a panic.
//! A rejected message 2 must leave the initiator able to finish with the genuine one.
//!
//! Messages are either raw fuzzer bytes or the genuine message (from fixed seeds) with
//! fuzzer-chosen damage, so both the length checks and the authentication paths are reached.

#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use engine_proto::crypto::{Initiator, Psk, respond};
use libfuzzer_sys::fuzz_target;

const PSK: [u8; 32] = [0x42; 32];
const SEED_I: [u8; 32] = [1; 32];
const SEED_R: [u8; 32] = [2; 32];
const PAYLOAD_I: &[u8] = b"\x00\x00\x00\x01";
const PAYLOAD_R: &[u8] = b"\x00\x00\x00\x02";

#[derive(Arbitrary, Debug)]
enum Message {
    Raw(Vec<u8>),
    /// The genuine message with bytes XORed, then cut to `truncate` bytes, then extended.
    Damaged {
        flips: Vec<(u16, u8)>,
        truncate: Option<u16>,
        append: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    msg1: Message,
    msg2: Message,
    /// Payload length the responder answers with.
    reply_len: u16,
}

struct Genuine {
    msg1: Vec<u8>,
    msg2: Vec<u8>,
    /// The initiator's (tx, rx) secrets.
    secrets: ([u8; 32], [u8; 32]),
}

fn genuine() -> &'static Genuine {
    static GENUINE: OnceLock<Genuine> = OnceLock::new();
    GENUINE.get_or_init(|| {
        let psk = Psk::from_bytes(PSK);
        let mut msg1 = Vec::new();
        Initiator::start(&psk, SEED_I, PAYLOAD_I, &mut msg1).expect("message 1");
        let mut msg2 = Vec::new();
        let (payload, keys) = respond(&psk, SEED_R, &msg1, &mut msg2, |_| PAYLOAD_R.to_vec())
            .expect("genuine message 1 authenticates");
        assert_eq!(payload, PAYLOAD_I);
        Genuine {
            msg1,
            msg2,
            secrets: (keys.rx_secret, keys.tx_secret),
        }
    })
}

impl Message {
    fn build(&self, genuine: &[u8]) -> Vec<u8> {
        match self {
            Message::Raw(bytes) => bytes.clone(),
            Message::Damaged {
                flips,
                truncate,
                append,
            } => {
                let mut out = genuine.to_vec();
                if !out.is_empty() {
                    for &(at, mask) in flips {
                        let i = usize::from(at) % out.len();
                        out[i] ^= mask;
                    }
                }
                if let Some(len) = truncate {
                    out.truncate(usize::from(*len));
                }
                out.extend_from_slice(append);
                out
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let genuine = genuine();
    let psk = Psk::from_bytes(PSK);

    // Message 1 into a responder.
    let msg1 = input.msg1.build(&genuine.msg1);
    let mut out = Vec::new();
    let mut called = false;
    let reply_len = usize::from(input.reply_len);
    let result = respond(&psk, SEED_R, &msg1, &mut out, |_| {
        called = true;
        vec![7; reply_len]
    });
    match result {
        Ok((payload, _)) => {
            assert!(called);
            assert_eq!(msg1, genuine.msg1, "a damaged message 1 authenticated");
            assert_eq!(payload, PAYLOAD_I);
            assert!(!out.is_empty());
        }
        Err(_) => {
            assert!(out.is_empty(), "a failed handshake wrote a reply");
            // The payload callback sees only authenticated messages.
            assert!(!called || msg1 == genuine.msg1);
        }
    }

    // Message 2 into an initiator, then the genuine message 2.
    let msg2 = input.msg2.build(&genuine.msg2);
    let mut msg1 = Vec::new();
    let mut initiator = Initiator::start(&psk, SEED_I, PAYLOAD_I, &mut msg1).expect("message 1");
    assert_eq!(msg1, genuine.msg1, "fixed seeds give the same message 1");
    let keys = match initiator.finish(&msg2) {
        Ok((payload, keys)) => {
            assert_eq!(msg2, genuine.msg2, "a damaged message 2 authenticated");
            assert_eq!(payload, PAYLOAD_R);
            assert!(initiator.finish(&genuine.msg2).is_err(), "finished twice");
            keys
        }
        Err(_) => {
            let (payload, keys) = initiator
                .finish(&genuine.msg2)
                .expect("a rejected message 2 must not spoil the handshake");
            assert_eq!(payload, PAYLOAD_R);
            keys
        }
    };
    assert_eq!((keys.tx_secret, keys.rx_secret), genuine.secrets);
});
