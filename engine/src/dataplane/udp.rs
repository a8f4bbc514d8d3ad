//! The shard's UDP socket: set-up (GRO on unless disabled), the GRO control message, and the
//! send slots that hold GSO batches while the kernel sends them.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

use super::sockaddr;

/// Socket buffer sizes asked for; the kernel caps them at `net.core.{r,w}mem_max` unless we are
/// privileged (then the FORCE variants apply).
const SOCKET_BUFFER: usize = 8 << 20;

/// Opens the shard's UDP socket bound to `addr` (port 0 for a node that only dials out), with
/// SO_REUSEPORT so that every shard can bind the same address; `gro` asks the kernel to coalesce
/// received datagrams.
pub(crate) fn bind(addr: SocketAddr, gro: bool) -> io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    socket.set_reuse_port(true)?;
    grow_buffers(&socket);
    socket.bind(&addr.into())?;
    let fd = OwnedFd::from(socket);
    // GRO is an optimisation: without it every datagram is its own completion.
    if gro {
        let _ = set_int(&fd, libc::SOL_UDP, libc::UDP_GRO, 1);
    }
    Ok(fd)
}

/// Opens a non-blocking UDP socket on an ephemeral port, connected to `target`: one UDP map
/// flow's socket on the `allow` side, so the target's replies come back to it alone.
pub(crate) fn connect(target: SocketAddr) -> io::Result<OwnedFd> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_nonblocking(true)?;
    socket.connect(&target.into())?;
    Ok(OwnedFd::from(socket))
}

/// Sends one datagram on a connected socket, without waiting.
pub(crate) fn send(fd: &OwnedFd, data: &[u8]) -> io::Result<()> {
    // SAFETY: a valid buffer for the duration of the call.
    let rc = unsafe {
        libc::send(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Grows a UDP map listener's buffers like the tunnel socket's: bursts from many clients wait
/// there for the shard's next round.
pub(crate) fn bind_map(addr: SocketAddr) -> io::Result<OwnedFd> {
    bind(addr, false)
}

fn grow_buffers(socket: &Socket) {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let fd = socket.as_raw_fd();
        if set_raw_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER as i32).is_err() {
            let _ = set_raw_int(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER as i32);
        }
    }
}

pub(crate) fn set_int(fd: &OwnedFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    set_raw_int(fd.as_raw_fd(), level, name, value)
}

fn set_raw_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a plain setsockopt with a correctly sized int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Walks the control messages for UDP_GRO's segment size.
pub(crate) fn gro_segment_size(mut control: &[u8]) -> Option<usize> {
    let header_len = mem::size_of::<libc::cmsghdr>();
    while control.len() >= header_len {
        // SAFETY: at least a header's worth of bytes; read unaligned.
        let header: libc::cmsghdr =
            unsafe { std::ptr::read_unaligned(control.as_ptr().cast::<libc::cmsghdr>()) };
        let len = header.cmsg_len;
        if len < header_len || len > control.len() {
            return None;
        }
        if header.cmsg_level == libc::SOL_UDP && header.cmsg_type == libc::UDP_GRO {
            let data = control.get(header_len..header_len + 4)?;
            let size = i32::from_ne_bytes(data.try_into().ok()?);
            return usize::try_from(size).ok().filter(|&s| s > 0);
        }
        // CMSG_ALIGN: control messages are padded to the size of a long.
        let advance = len.next_multiple_of(mem::size_of::<usize>());
        control = control.get(advance..)?;
    }
    None
}

/// A send in flight: the batch's bytes, its destination and the message header pointing at
/// them. Boxed by the owner so the kernel's pointers stay valid until the completion.
#[derive(Debug)]
pub(crate) struct SendSlot {
    pub(crate) buf: Box<[u8]>,
    pub(crate) len: usize,
    pub(crate) segment_size: Option<usize>,
    pub(crate) destination: Option<SocketAddr>,
    iov: libc::iovec,
    addr: libc::sockaddr_storage,
    /// Room for one UDP_SEGMENT control message, 8-byte aligned.
    control: [u64; 4],
    msg: libc::msghdr,
}

impl SendSlot {
    pub(crate) fn new(capacity: usize) -> Box<Self> {
        // SAFETY: all-zero is valid for these plain C structs.
        Box::new(Self {
            buf: vec![0; capacity].into_boxed_slice(),
            len: 0,
            segment_size: None,
            destination: None,
            iov: unsafe { mem::zeroed() },
            addr: unsafe { mem::zeroed() },
            control: [0; 4],
            msg: unsafe { mem::zeroed() },
        })
    }

    /// Fills in the message header for the `len` bytes in `buf`; with `gso`, several segments
    /// go out as one GSO send. Returns the header to submit.
    pub(crate) fn prepare(
        &mut self,
        destination: SocketAddr,
        len: usize,
        segment_size: Option<usize>,
        gso: bool,
    ) -> *const libc::msghdr {
        self.len = len;
        self.segment_size = segment_size;
        self.destination = Some(destination);
        self.iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast(),
            iov_len: len,
        };
        let addr_len = sockaddr::write(destination, &mut self.addr);
        self.msg.msg_name = (&mut self.addr as *mut libc::sockaddr_storage).cast();
        self.msg.msg_namelen = addr_len;
        self.msg.msg_iov = &mut self.iov;
        self.msg.msg_iovlen = 1;
        match segment_size.filter(|&s| gso && s < len) {
            Some(size) => {
                let header_len = mem::size_of::<libc::cmsghdr>();
                let space =
                    (header_len + mem::size_of::<u16>()).next_multiple_of(mem::size_of::<usize>());
                let header = libc::cmsghdr {
                    cmsg_len: header_len + mem::size_of::<u16>(),
                    cmsg_level: libc::SOL_UDP,
                    cmsg_type: libc::UDP_SEGMENT,
                };
                let control = self.control.as_mut_ptr().cast::<u8>();
                // SAFETY: `control` is 32 bytes, aligned for cmsghdr; header + u16 fit.
                unsafe {
                    std::ptr::write(control.cast::<libc::cmsghdr>(), header);
                    std::ptr::write_unaligned(control.add(header_len).cast::<u16>(), size as u16);
                }
                self.msg.msg_control = control.cast();
                self.msg.msg_controllen = space;
            }
            None => {
                self.msg.msg_control = std::ptr::null_mut();
                self.msg.msg_controllen = 0;
            }
        }
        &self.msg
    }

    /// The datagrams of the batch, one by one (for the fallback when the kernel refuses GSO).
    pub(crate) fn segments(&self) -> impl Iterator<Item = &[u8]> {
        let size = self.segment_size.unwrap_or(self.len).max(1);
        self.buf[..self.len].chunks(size)
    }
}

/// Sends one datagram directly (used only for the GSO fallback); errors are the caller's to
/// count: the ARQ recovers a datagram that is not sent.
pub(crate) fn send_to(fd: &OwnedFd, data: &[u8], destination: SocketAddr) -> io::Result<()> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let addr_len = sockaddr::write(destination, &mut addr);
    // SAFETY: valid buffer and address for the duration of the call.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT,
            (&addr as *const libc::sockaddr_storage).cast(),
            addr_len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_gro_segment_size_among_control_messages() {
        let header_len = mem::size_of::<libc::cmsghdr>();
        let mut control = vec![0u8; 64];
        let other = libc::cmsghdr {
            cmsg_len: header_len + 4,
            cmsg_level: libc::SOL_SOCKET,
            cmsg_type: 99,
        };
        let gro = libc::cmsghdr {
            cmsg_len: header_len + 4,
            cmsg_level: libc::SOL_UDP,
            cmsg_type: libc::UDP_GRO,
        };
        let second = (header_len + 4).next_multiple_of(8);
        // SAFETY: writes inside the 64-byte buffer.
        unsafe {
            std::ptr::write_unaligned(control.as_mut_ptr().cast(), other);
            std::ptr::write_unaligned(control.as_mut_ptr().add(second).cast(), gro);
        }
        control[second + header_len..second + header_len + 4]
            .copy_from_slice(&1400i32.to_ne_bytes());
        assert_eq!(
            gro_segment_size(&control[..second + header_len + 4]),
            Some(1400)
        );
        assert_eq!(gro_segment_size(&control[..second]), None);
        assert_eq!(gro_segment_size(&[0xff; 40]), None);
    }

    #[test]
    fn slot_segments_split_a_batch() {
        let mut slot = SendSlot::new(64);
        slot.buf[..10].copy_from_slice(b"aaaabbbbcc");
        slot.prepare("127.0.0.1:9".parse().unwrap(), 10, Some(4), true);
        let segments: Vec<&[u8]> = slot.segments().collect();
        assert_eq!(segments, [&b"aaaa"[..], b"bbbb", b"cc"]);
        assert!(!slot.msg.msg_control.is_null());
        slot.prepare("127.0.0.1:9".parse().unwrap(), 4, None, true);
        assert!(slot.msg.msg_control.is_null());
    }
}
