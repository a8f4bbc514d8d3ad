//! TCP sockets of the forwarders: `maps` listeners and connections to `allow` targets.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Listeners' accept backlog.
const BACKLOG: i32 = 1024;

/// A `maps` listener. SO_REUSEPORT lets every shard own a listener on the same address, so the
/// kernel spreads new connections over the shards.
pub(crate) fn listen(addr: SocketAddr) -> io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// The address a socket is bound to (a listener on port 0 learns its port here).
pub(crate) fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(fd);
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket"))
}

/// A socket for an outbound connection to `target`; the connect itself goes through the ring.
pub(crate) fn socket_for(target: SocketAddr) -> io::Result<OwnedFd> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    Ok(socket.into())
}

/// Forwarded bytes should not wait for Nagle: the tunnel already batches.
pub(crate) fn set_nodelay(fd: &OwnedFd) {
    let _ = socket2::SockRef::from(fd).set_nodelay(true);
}

/// Makes the next close send a RST instead of a FIN, so the other end sees the connection fail
/// rather than end cleanly (used when the stream on the other side of the tunnel was reset).
pub(crate) fn set_abort_on_close(fd: &OwnedFd) {
    let _ = socket2::SockRef::from(fd).set_linger(Some(std::time::Duration::ZERO));
}

/// Half-closes the write side: the TCP peer reads end-of-stream and may still send.
pub(crate) fn shutdown_write(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain shutdown(2) on a socket we own.
    if unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The address at the other end of an accepted connection, for logs.
pub(crate) fn peer_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    socket2::SockRef::from(fd).peer_addr().ok()?.as_socket()
}
