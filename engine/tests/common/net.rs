//! Loopback TCP endpoints: free ports, an echo server, a hashing sink, a half-close "reply"
//! server, and clients that check every byte they send and receive.
//!
//! Every blocking operation is bounded by a deadline or a socket timeout, and failures come back
//! as `Err(String)` saying what was going on, so a broken tunnel fails a test instead of hanging
//! the suite.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::data::{CHUNK, Fingerprint, Hasher, Seeded};

/// Socket timeout of server-side connections: they end on their own if a test walks away.
const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Most bytes the reply server reads as a request.
const MAX_REQUEST: usize = 1 << 20;

/// A loopback TCP address that was free a moment ago (bind port 0, read the port, close).
pub fn free_tcp_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback TCP port");
    listener
        .local_addr()
        .expect("local address of a bound socket")
}

/// A loopback UDP address that was free a moment ago.
pub fn free_udp_addr() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback UDP port");
    socket
        .local_addr()
        .expect("local address of a bound socket")
}

/// A loopback TCP address with nothing listening: connecting to it is refused.
pub fn closed_tcp_addr() -> SocketAddr {
    free_tcp_addr()
}

/// Time left until `deadline`, or a timeout error once it has passed. Never zero, which the
/// socket timeout setters reject.
fn remaining(deadline: Instant, what: &str) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(format!("{what}: deadline passed"));
    }
    Ok(left.max(Duration::from_millis(1)))
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Writes `len` bytes of the `seed` stream, returning their fingerprint. Does not shut down.
pub fn send_seeded(
    stream: &mut TcpStream,
    seed: u64,
    len: u64,
    deadline: Instant,
) -> Result<Fingerprint, String> {
    let mut source = Seeded::new(seed, len);
    let mut hasher = Hasher::new();
    let mut buf = vec![0; CHUNK];
    loop {
        let n = source.fill(&mut buf);
        if n == 0 {
            return Ok(hasher.finish());
        }
        let what = || format!("sending {len} bytes, {} sent so far", hasher.len());
        let left = remaining(deadline, &what())?;
        stream
            .set_write_timeout(Some(left))
            .map_err(|e| format!("{}: set_write_timeout: {e}", what()))?;
        stream.write_all(&buf[..n]).map_err(|e| {
            if is_timeout(&e) {
                format!("{}: timed out", what())
            } else {
                format!("{}: {e}", what())
            }
        })?;
        hasher.update(&buf[..n]);
    }
}

/// Reads until EOF, returning the fingerprint of everything read.
pub fn recv_fingerprint(stream: &mut TcpStream, deadline: Instant) -> Result<Fingerprint, String> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0; CHUNK];
    loop {
        let what = || format!("receiving, {} bytes so far", hasher.len());
        let left = remaining(deadline, &what())?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("{}: set_read_timeout: {e}", what()))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(hasher.finish()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(format!("{}: timed out", what())),
            Err(e) => return Err(format!("{}: {e}", what())),
        }
    }
}

/// Reads until EOF, keeping at most `limit` bytes.
pub fn recv_bytes(
    stream: &mut TcpStream,
    limit: usize,
    deadline: Instant,
) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let mut buf = vec![0; CHUNK];
    loop {
        let what = |n: usize| format!("receiving, {n} bytes so far");
        let left = remaining(deadline, &what(bytes.len()))?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("set_read_timeout: {e}"))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(bytes),
            Ok(n) if bytes.len() + n > limit => {
                return Err(format!(
                    "{}: more than {limit} bytes",
                    what(bytes.len() + n)
                ));
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(format!("{}: timed out", what(bytes.len()))),
            Err(e) => return Err(format!("{}: {e}", what(bytes.len()))),
        }
    }
}

/// Both directions of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    pub sent: Fingerprint,
    pub received: Fingerprint,
}

/// Full duplex: sends `len` bytes of `seed` then shuts down the write side (from a second
/// thread), while reading until EOF.
pub fn exchange(
    stream: TcpStream,
    seed: u64,
    len: u64,
    deadline: Instant,
) -> Result<Exchange, String> {
    let mut writer = stream.try_clone().map_err(|e| format!("try_clone: {e}"))?;
    let sending = thread::spawn(move || {
        let sent = send_seeded(&mut writer, seed, len, deadline)?;
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown(write) after sending {len} bytes: {e}"))?;
        Ok::<_, String>(sent)
    });
    let mut reader = stream;
    let received = recv_fingerprint(&mut reader, deadline);
    if received.is_err() {
        // Unblocks the writer if the peer stopped reading.
        let _ = reader.shutdown(Shutdown::Both);
    }
    let sent = sending
        .join()
        .map_err(|_| "the sending thread panicked".to_owned())?;
    match (sent, received) {
        (Ok(sent), Ok(received)) => Ok(Exchange { sent, received }),
        (Err(send), Ok(received)) => Err(format!("send failed: {send} (received {received:?})")),
        (Ok(sent), Err(recv)) => Err(format!("receive failed: {recv} (sent {sent:?})")),
        (Err(send), Err(recv)) => Err(format!("send failed: {send}; receive failed: {recv}")),
    }
}

/// Connects to an echo service at `addr`, sends `len` bytes of `seed` and checks that exactly
/// those bytes come back before EOF.
pub fn echo_check(addr: SocketAddr, seed: u64, len: u64, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let stream = TcpStream::connect_timeout(&addr, remaining(deadline, "connect")?)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let result = exchange(stream, seed, len, deadline)
        .map_err(|e| format!("echo of {len} bytes via {addr}: {e}"))?;
    if result.received != result.sent {
        return Err(format!(
            "echo of {len} bytes via {addr}: sent {:?}, got back {:?}",
            result.sent, result.received
        ));
    }
    Ok(())
}

/// Connects, retrying refused connections (a listener not bound yet) until `timeout`.
pub fn connect_retry(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = remaining(deadline, "connect")?.min(Duration::from_secs(1));
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() + Duration::from_millis(50) >= deadline => {
                return Err(format!(
                    "connect to {addr}: no success within {timeout:?}: {e}"
                ));
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Reads (discarding nothing: any data is an error) until the peer closes the connection (EOF
/// or reset); returns how long that took. An error if it is still open after `timeout`.
pub fn wait_closed(stream: &mut TcpStream, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut buf = [0; 4096];
    loop {
        let left = remaining(deadline, "waiting for the connection to close")
            .map_err(|_| format!("the connection is still open after {timeout:?}"))?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("set_read_timeout: {e}"))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(start.elapsed()),
            Ok(n) => {
                return Err(format!(
                    "expected the connection to close, received {n} bytes"
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                return Err(format!("the connection is still open after {timeout:?}"));
            }
            // Reset or aborted: closed, too.
            Err(_) => return Ok(start.elapsed()),
        }
    }
}

/// Starts a new `attempt` every `interval` (each in its own thread, each given the overall
/// deadline) until one succeeds; returns how long that took. Overlapping attempts make this
/// independent of whether the engine holds a connection until its session is up or closes it.
pub fn first_success<F>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    attempt: F,
) -> Result<Duration, String>
where
    F: Fn(Instant) -> Result<(), String> + Send + Sync + 'static,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let attempt = Arc::new(attempt);
    let (tx, rx) = mpsc::channel();
    let mut launched = 0u32;
    let mut failures = 0u32;
    let mut last_error = String::from("none finished");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "{what}: no success within {timeout:?} ({launched} attempts, {failures} failed; \
                 last error: {last_error})"
            ));
        }
        let attempt = Arc::clone(&attempt);
        let tx = tx.clone();
        launched += 1;
        thread::spawn(move || {
            let _ = tx.send(attempt(deadline));
        });
        let next = (now + interval).min(deadline);
        loop {
            let left = next.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(())) => return Ok(start.elapsed()),
                Ok(Err(e)) => {
                    failures += 1;
                    last_error = e;
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => unreachable!("this function holds a sender"),
            }
        }
    }
}

/// A loopback TCP server running a handler per connection, each in its own thread. Dropping it
/// stops accepting; running handlers end by themselves (their sockets have timeouts).
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn spawn<H>(handler: H) -> Self
    where
        H: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback TCP server");
        let addr = listener
            .local_addr()
            .expect("local address of a bound socket");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let handler = Arc::new(handler);
        let thread = {
            let stop = Arc::clone(&stop);
            let accepted = Arc::clone(&accepted);
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = conn else {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.set_read_timeout(Some(SERVER_IO_TIMEOUT));
                    let _ = stream.set_write_timeout(Some(SERVER_IO_TIMEOUT));
                    let handler = Arc::clone(&handler);
                    thread::spawn(move || handler(stream));
                }
            })
        };
        Self {
            addr,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Echoes every byte back; shuts down its write side after the client's EOF.
pub fn echo_server() -> Server {
    Server::spawn(|mut stream| {
        let Ok(mut reader) = stream.try_clone() else {
            return;
        };
        if io::copy(&mut reader, &mut stream).is_ok() {
            let _ = stream.shutdown(Shutdown::Write);
        }
    })
}

/// What the sink server saw on one connection.
pub type SinkReport = Result<Fingerprint, String>;

/// Reads each connection to EOF, reporting the fingerprint of what arrived, while concurrently
/// sending `reply_len` bytes of `reply_seed` (then shutting down its write side).
pub fn sink_server(reply_seed: u64, reply_len: u64) -> (Server, Receiver<SinkReport>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let server = Server::spawn(move |stream| {
        let deadline = Instant::now() + SERVER_IO_TIMEOUT;
        let report = exchange(stream, reply_seed, reply_len, deadline).map(|x| x.received);
        let _ = tx.lock().map(|tx| tx.send(report));
    });
    (server, rx)
}

/// What the reply server received as a request.
pub type ReplyReport = Result<Vec<u8>, String>;

/// Half-close server: reads the request until EOF, then writes `response` and closes.
pub fn reply_server(response: Vec<u8>) -> (Server, Receiver<ReplyReport>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let server = Server::spawn(move |mut stream| {
        let deadline = Instant::now() + SERVER_IO_TIMEOUT;
        let report = recv_bytes(&mut stream, MAX_REQUEST, deadline).and_then(|request| {
            stream
                .write_all(&response)
                .map_err(|e| format!("writing the {}-byte response: {e}", response.len()))?;
            Ok(request)
        });
        let _ = stream.shutdown(Shutdown::Both);
        let _ = tx.lock().map(|tx| tx.send(report));
    });
    (server, rx)
}
