//! Request/response latency over TCP, the way an interactive user sees a tunnel: the client
//! writes a small request at a fixed interval and times each until its same-size answer has
//! been read back whole; the server echoes. Used by the loss-emulation comparison through plain
//! TCP, kcptun and the engine alike (all three carry a TCP connection).
//!
//! One connection carries every request, so a lost packet also delays the requests queued
//! behind it, as it would for an SSH session or a game: that is part of what is measured.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

/// Echoes every connection on `listener` until the process ends (one thread per connection);
/// `congestion` names the TCP congestion control of each connection (None: the kernel's default).
pub fn serve(listener: TcpListener, congestion: Option<&str>) -> io::Result<()> {
    for stream in listener.incoming() {
        let mut stream = stream?;
        if let Some(name) = congestion {
            set_congestion(&stream, name)?;
        }
        thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

/// Switches `stream` to TCP congestion control `name` (`cubic`, `bbr`); Linux allows it on a
/// connected socket, and the error names an algorithm the kernel lacks.
pub fn set_congestion(stream: &TcpStream, name: &str) -> io::Result<()> {
    // SAFETY: setsockopt reads `name.len()` bytes from a valid buffer.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let err = io::Error::last_os_error();
        Err(io::Error::new(
            err.kind(),
            format!("TCP congestion control {name:?}: {err}"),
        ))
    }
}

/// The TCP congestion control `stream` uses.
pub fn congestion(stream: &TcpStream) -> io::Result<String> {
    let mut buf = [0u8; 32];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `buf` and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let name = &buf[..(len as usize).min(buf.len())];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// What a client run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Latencies {
    /// Round-trip times of the answered requests, sorted.
    pub samples: Vec<Duration>,
    /// Requests sent that were not answered before the deadline.
    pub unanswered: usize,
}

impl Latencies {
    /// The `q` quantile (0.0..=1.0) of the answered requests, nearest rank; None without any.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let n = self.samples.len();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n);
        self.samples.get(rank - 1).copied()
    }
}

/// Sends `count` requests of `size` bytes to `server`, one every `interval`, and times each;
/// gives up on what is still unanswered `grace` after the last request. `congestion` as for
/// [`serve`].
pub fn run_client(
    server: SocketAddr,
    count: usize,
    size: usize,
    interval: Duration,
    grace: Duration,
    congestion: Option<&str>,
) -> io::Result<Latencies> {
    let stream = TcpStream::connect_timeout(&server, Duration::from_secs(10))?;
    stream.set_nodelay(true)?;
    if let Some(name) = congestion {
        set_congestion(&stream, name)?;
    }
    let mut reader = stream.try_clone()?;
    let mut writer = stream;
    let start = Instant::now();
    let deadline = start + interval * count as u32 + grace;
    // The reader runs on its own thread, so a slow answer never delays the next request.
    let sent_at: Vec<Instant> = (0..count).map(|i| start + interval * i as u32).collect();
    let expected = sent_at.clone();
    let reading = thread::spawn(move || -> io::Result<Vec<Duration>> {
        let mut samples = Vec::with_capacity(expected.len());
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        while samples.len() < expected.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            reader.set_read_timeout(Some(left))?;
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let now = Instant::now();
                    got += n;
                    // Each complete answer is the next request's (one ordered connection).
                    while (samples.len() + 1) * size <= got {
                        let sent = expected[samples.len()];
                        samples.push(now.saturating_duration_since(sent));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(samples)
    });
    let request = vec![0x42u8; size];
    for at in &sent_at {
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        if writer.write_all(&request).is_err() {
            break;
        }
    }
    let mut samples = reading
        .join()
        .map_err(|_| io::Error::other("the reader thread panicked"))??;
    samples.sort();
    Ok(Latencies {
        unanswered: count - samples.len(),
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_is_timed_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || serve(listener, None));
        let l = run_client(
            addr,
            50,
            64,
            Duration::from_millis(2),
            Duration::from_secs(5),
            None,
        )
        .unwrap();
        assert_eq!((l.samples.len(), l.unanswered), (50, 0));
        assert!(l.samples.windows(2).all(|w| w[0] <= w[1]), "sorted");
        assert!(l.quantile(0.99).unwrap() >= l.quantile(0.5).unwrap());
    }

    #[test]
    fn unanswered_requests_are_counted() {
        // A server that reads but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            while s.read(&mut buf).is_ok_and(|n| n > 0) {}
        });
        let l = run_client(
            addr,
            5,
            64,
            Duration::from_millis(1),
            Duration::from_millis(200),
            None,
        )
        .unwrap();
        assert_eq!((l.samples.len(), l.unanswered), (0, 5));
        assert_eq!(l.quantile(0.5), None);
    }

    #[test]
    fn the_congestion_control_is_set_on_both_ends() {
        // Reno is built into every kernel; the default here may be cubic or bbr.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || serve(listener, Some("reno")));
        let l = run_client(
            addr,
            5,
            64,
            Duration::from_millis(1),
            Duration::from_secs(5),
            Some("reno"),
        )
        .unwrap();
        assert_eq!(l.samples.len(), 5);
        let s = TcpStream::connect(addr).unwrap();
        set_congestion(&s, "reno").unwrap();
        assert_eq!(congestion(&s).unwrap(), "reno");
        let err = set_congestion(&s, "no-such-algorithm").unwrap_err();
        assert!(err.to_string().contains("no-such-algorithm"), "{err}");
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let l = Latencies {
            samples: (1..=100).map(Duration::from_millis).collect(),
            unanswered: 0,
        };
        assert_eq!(l.quantile(0.5), Some(Duration::from_millis(50)));
        assert_eq!(l.quantile(0.99), Some(Duration::from_millis(99)));
        assert_eq!(l.quantile(1.0), Some(Duration::from_millis(100)));
        assert_eq!(l.quantile(0.0), Some(Duration::from_millis(1)));
    }
}
