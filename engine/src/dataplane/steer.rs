//! Reuseport steering: the classic BPF program that makes the kernel deliver each datagram to the
//! socket (and so the shard) that owns its session.
//!
//! Every shard binds the same UDP address with `SO_REUSEPORT`; the program, attached once with
//! `SO_ATTACH_REUSEPORT_CBPF`, applies to the whole reuseport group and returns the index of the
//! socket to deliver to, index `i` being the `i`-th socket bound in the group (so shard `i` must
//! bind `i`-th). The kernel runs it on the UDP payload (`net/core/sock_reuseport.c`,
//! `run_bpf_filter`, pulls the UDP header first), so offsets below are payload offsets:
//!
//! * byte 0: version (3 bits) | key phase (1) | packet type (low 4 bits);
//! * bytes 1..5: the receiver's session id, u32 big endian, whose top byte (offset 1) is the
//!   owning shard.
//!
//! A handshake init (type 1) has no session at the receiver yet; its id field carries a steering
//! hint from the initiator (consecutive for its shards, from a random base), and the program
//! returns `hint % shards`, spreading a peer's sessions over our shards. Every other type returns the shard byte.
//!
//! What the kernel does with other answers (checked in `run_bpf_filter` and
//! `reuseport_select_sock`): an index at or above the group's socket count makes `run_bpf_filter`
//! return NULL, and `reuseport_select_sock` then falls back to `reuseport_select_sock_by_hash`,
//! the ordinary 4-tuple hash. So a shard byte that names no shard (garbage, or a peer's stale
//! id) still reaches some shard, which hands it over or drops it; nothing is lost to steering.
//! Datagrams shorter than 5 bytes are answered with `u32::MAX` for the same fallback; an
//! out-of-bounds load would also be harmless (it ends a classic BPF program with return value
//! 0, which would pile such packets on shard 0), but the explicit check spreads them.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd};

use engine_api::config::MAX_SHARDS;
use libc::sock_filter;

/// The packet type of a handshake init, whose id field is a steering hint.
const HANDSHAKE_INIT: u32 = 1;
/// Bytes the program reads: the first byte and the session id.
const HEADER: u32 = 5;
/// An index no group has, so the kernel falls back to its hash.
const NO_SOCKET: u32 = u32::MAX;

/// Attaches the steering program to `socket`'s reuseport group, for a group of `shards` sockets.
///
/// `socket` must have `SO_REUSEPORT` set; it may be bound already or not (the kernel then creates
/// the group). Attaching again replaces the program for the whole group.
pub(crate) fn attach(socket: BorrowedFd<'_>, shards: usize) -> io::Result<()> {
    let shards = u32::try_from(shards)
        .ok()
        .filter(|&shards| shards >= 1 && shards as usize <= MAX_SHARDS)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot steer to {shards} shards: expected 1 to {MAX_SHARDS}"),
            )
        })?;
    let mut filter = program(shards);
    let prog = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The program for a group of `shards` (at least 1) sockets.
fn program(shards: u32) -> [sock_filter; 11] {
    use libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_LEN,
        BPF_MOD, BPF_RET, BPF_W,
    };
    const fn op(code: u32, jt: u8, jf: u8, k: u32) -> sock_filter {
        sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        }
    }
    // Jump offsets count instructions after the jump.
    [
        /* 0 */ op(BPF_LD | BPF_W | BPF_LEN, 0, 0, 0), // A = payload length
        /* 1 */ op(BPF_JMP | BPF_JGE | BPF_K, 0, 8, HEADER), // short: to 10
        /* 2 */ op(BPF_LD | BPF_B | BPF_ABS, 0, 0, 0), // A = byte 0
        /* 3 */ op(BPF_ALU | BPF_AND | BPF_K, 0, 0, 0x0f), // A = type
        /* 4 */ op(BPF_JMP | BPF_JEQ | BPF_K, 2, 0, HANDSHAKE_INIT), // init: to 7
        /* 5 */ op(BPF_LD | BPF_B | BPF_ABS, 0, 0, 1), // A = shard byte
        /* 6 */ op(BPF_RET | BPF_A, 0, 0, 0),
        /* 7 */ op(BPF_LD | BPF_W | BPF_ABS, 0, 0, 1), // A = hint (big endian)
        /* 8 */ op(BPF_ALU | BPF_MOD | BPF_K, 0, 0, shards), // unsigned
        /* 9 */ op(BPF_RET | BPF_A, 0, 0, 0),
        /* 10 */ op(BPF_RET | BPF_K, 0, 0, NO_SOCKET),
    ]
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
    use std::os::fd::AsFd;

    use socket2::{Domain, Protocol, Socket, Type};

    use super::*;

    /// What the program should answer, written plainly.
    fn expected(packet: &[u8], shards: u32) -> u32 {
        match packet {
            [first, id @ ..] if packet.len() >= HEADER as usize => {
                let id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
                if u32::from(first & 0x0f) == HANDSHAKE_INIT {
                    id % shards
                } else {
                    id >> 24
                }
            }
            _ => NO_SOCKET,
        }
    }

    /// Runs the instructions [`program`] uses, as the kernel would (a load past the end ends the
    /// program with 0).
    fn run(program: &[sock_filter], packet: &[u8]) -> u32 {
        use libc::{
            BPF_A, BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD,
            BPF_LEN, BPF_MOD, BPF_RET, BPF_W,
        };
        let mut a: u32 = 0;
        let mut pc = 0;
        loop {
            let insn = program[pc];
            pc += 1;
            let code = u32::from(insn.code);
            let k = insn.k as usize;
            match code {
                c if c == BPF_LD | BPF_W | BPF_LEN => a = packet.len() as u32,
                c if c == BPF_LD | BPF_B | BPF_ABS => match packet.get(k) {
                    Some(&byte) => a = u32::from(byte),
                    None => return 0,
                },
                c if c == BPF_LD | BPF_W | BPF_ABS => match packet.get(k..k + 4) {
                    Some(word) => a = u32::from_be_bytes(word.try_into().unwrap()),
                    None => return 0,
                },
                c if c == BPF_ALU | BPF_AND | BPF_K => a &= insn.k,
                c if c == BPF_ALU | BPF_MOD | BPF_K => a %= insn.k,
                c if c == BPF_JMP | BPF_JGE | BPF_K || c == BPF_JMP | BPF_JEQ | BPF_K => {
                    let taken = if c & 0xf0 == BPF_JGE {
                        a >= insn.k
                    } else {
                        a == insn.k
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                c if c == BPF_RET | BPF_A => return a,
                c if c == BPF_RET | BPF_K => return insn.k,
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    #[test]
    fn program_answers_as_specified() {
        let mut packets: Vec<Vec<u8>> = (0..5).map(|len| vec![0x01; len]).collect();
        for first in [
            0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x21, 0x25, 0x31, 0x0f, 0xf1, 0xf3,
        ] {
            for id in [
                0u32,
                1,
                2,
                5,
                0x0100_0000,
                0x02ff_ffff,
                0x8000_0000,
                u32::MAX,
            ] {
                let mut packet = vec![first];
                packet.extend_from_slice(&id.to_be_bytes());
                packets.push(packet.clone());
                packet.extend_from_slice(b"payload");
                packets.push(packet);
            }
        }
        for shards in [1, 2, 3, 7, 254, 255] {
            let program = program(shards);
            for packet in &packets {
                assert_eq!(
                    run(&program, packet),
                    expected(packet, shards),
                    "{packet:02x?} with {shards} shards"
                );
            }
        }
    }

    /// `count` UDP sockets in one reuseport group on 127.0.0.1, in bind order.
    fn group(count: usize) -> (Vec<Socket>, SocketAddr) {
        let mut addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut sockets = Vec::new();
        for _ in 0..count {
            let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            socket.set_reuse_port(true).unwrap();
            socket.set_nonblocking(true).unwrap();
            socket.bind(&addr.into()).unwrap();
            addr = socket.local_addr().unwrap().as_socket().unwrap();
            sockets.push(socket);
        }
        (sockets, addr)
    }

    /// Waits (bounded) for one datagram on any of `sockets`: which one, and the datagram.
    fn receive(sockets: &[Socket]) -> (usize, Vec<u8>) {
        let mut fds: Vec<libc::pollfd> = sockets
            .iter()
            .map(|socket| libc::pollfd {
                fd: socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10_000) };
        assert!(ready > 0, "no datagram arrived within 10 s");
        let index = fds
            .iter()
            .position(|fd| fd.revents & libc::POLLIN != 0)
            .unwrap();
        let mut buf = [0u8; 256];
        let len = (&sockets[index]).read(&mut buf).unwrap();
        (index, buf[..len].to_vec())
    }

    fn clients(count: usize) -> Vec<UdpSocket> {
        (0..count)
            .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
            .collect()
    }

    fn packet(first: u8, id: u32, tag: u32) -> Vec<u8> {
        let mut packet = vec![first];
        packet.extend_from_slice(&id.to_be_bytes());
        packet.extend_from_slice(&tag.to_be_bytes());
        packet
    }

    /// Sends `packet` from `client` and returns the index of the socket that got it.
    fn deliver(sockets: &[Socket], server: SocketAddr, client: &UdpSocket, packet: &[u8]) -> usize {
        client.send_to(packet, server).unwrap();
        let (index, got) = receive(sockets);
        assert_eq!(got, packet, "a different datagram arrived");
        index
    }

    #[test]
    fn packets_reach_the_shard_they_name() {
        let (sockets, server) = group(3);
        attach(sockets[1].as_fd(), 3).unwrap();
        let clients = clients(4);
        let mut tag = 0;
        for client in &clients {
            for shard in 0u8..3 {
                for first in [0x03, 0x23, 0x02, 0x04, 0x25] {
                    tag += 1;
                    let id = u32::from_be_bytes([shard, 0xab, 0xcd, tag as u8]);
                    let index = deliver(&sockets, server, client, &packet(first, id, tag));
                    assert_eq!(index, usize::from(shard), "type {first:#x} id {id:#x}");
                }
            }
            for hint in [
                0u32,
                1,
                2,
                5,
                0x0200_0000,
                0x8000_0000,
                u32::MAX,
                0xdead_beef,
            ] {
                tag += 1;
                for first in [0x01, 0x21] {
                    let index = deliver(&sockets, server, client, &packet(first, hint, tag));
                    assert_eq!(index, (hint % 3) as usize, "init with hint {hint:#x}");
                }
            }
        }
    }

    #[test]
    fn unsteerable_packets_still_arrive() {
        let (sockets, server) = group(3);
        attach(sockets[0].as_fd(), 3).unwrap();
        let clients = clients(4);
        for (i, client) in clients.iter().enumerate() {
            for shard in [3u8, 7, 254, 255] {
                let index = deliver(
                    &sockets,
                    server,
                    client,
                    &packet(0x03, u32::from(shard) << 24, i as u32),
                );
                assert!(index < 3);
            }
            for len in 0..5 {
                let short = vec![0x03; len];
                assert!(deliver(&sockets, server, client, &short) < 3);
            }
        }
    }

    #[test]
    fn one_shard_gets_everything() {
        let (sockets, server) = group(1);
        attach(sockets[0].as_fd(), 1).unwrap();
        let client = &clients(1)[0];
        for (tag, first) in [0x01, 0x02, 0x03, 0x04, 0x05].into_iter().enumerate() {
            for id in [0, 0x0100_0000, u32::MAX] {
                assert_eq!(
                    deliver(&sockets, server, client, &packet(first, id, tag as u32)),
                    0
                );
            }
        }
        assert_eq!(deliver(&sockets, server, client, &[0x03]), 0);
    }

    #[test]
    fn shard_counts_out_of_range_are_refused() {
        let (sockets, _) = group(1);
        for shards in [0, MAX_SHARDS + 1] {
            let err = attach(sockets[0].as_fd(), shards).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        attach(sockets[0].as_fd(), MAX_SHARDS).unwrap();
    }
}
