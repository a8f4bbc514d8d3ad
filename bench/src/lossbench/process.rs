//! The processes a comparison starts inside the emulated link's namespaces: every one is bound
//! in time and killed when its handle is dropped, so an interrupted or failed run leaves nothing
//! running (a process left inside a deleted namespace would keep it alive, unlisted).

use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Set by SIGINT/SIGTERM: every wait gives up and the run unwinds (dropping kills and cleans).
pub static STOP: AtomicBool = AtomicBool::new(false);

/// How often waits look at the child and at [`STOP`].
const POLL: Duration = Duration::from_millis(20);

/// A child process in a namespace, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    label: String,
    child: Child,
    /// Collects stdout and stderr while the child runs, so a full pipe never blocks it.
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

/// What a finished process printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Proc {
    /// Starts `program args` inside network namespace `ns` (`ip netns exec`, which execs the
    /// program, so the pid is the program's own).
    pub fn spawn(label: &str, ns: &str, program: &Path, args: &[String]) -> io::Result<Proc> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::other(format!("{label}: cannot start `ip netns exec`: {e}")))?;
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            pipe.map(|mut p| {
                thread::spawn(move || {
                    let mut out = Vec::new();
                    let _ = p.read_to_end(&mut out);
                    out
                })
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        Ok(Proc {
            label: label.to_owned(),
            child,
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// False once the process has exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Like [`Proc::running`], through a shared reference (for searches over a list): asks
    /// the kernel without reaping.
    pub fn is_running(&self) -> bool {
        fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .map(|i| s[i + 1..].trim_start().starts_with('Z'))
            })
            .is_some_and(|zombie| !zombie)
    }

    /// Waits for the process to exit, at most `limit`; past it (or on [`STOP`]) the process is
    /// killed and the error says so.
    pub fn wait(mut self, limit: Duration) -> io::Result<Finished> {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if STOP.load(Relaxed) {
                return Err(io::Error::other(format!("{}: interrupted", self.label)));
            }
            if Instant::now() >= deadline {
                let out = self.kill_and_collect();
                let err = format!(
                    "{}: still running after {} s, killed; stderr: {}",
                    self.label,
                    limit.as_secs(),
                    out.stderr.trim()
                );
                return Err(io::Error::other(err));
            }
            thread::sleep(POLL);
        };
        let mut done = self.collect();
        done.success = status.success();
        Ok(done)
    }

    /// Kills the process and returns what it printed.
    pub fn kill_and_collect(&mut self) -> Finished {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.collect()
    }

    fn collect(&mut self) -> Finished {
        let text = |h: Option<JoinHandle<Vec<u8>>>| {
            h.and_then(|h| h.join().ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Finished {
            success: false,
            stdout: text(self.stdout.take()),
            stderr: text(self.stderr.take()),
        }
    }

    /// User + system CPU seconds the process (all its threads) has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid())
    }

    /// True once the process's namespace has a TCP socket listening on `port` (read from the
    /// process's own view of /proc/net/tcp, so no connection is made to find out).
    pub fn listening_tcp(&self, port: u16) -> bool {
        listening(self.pid(), "tcp", port) || listening(self.pid(), "tcp6", port)
    }

    /// Waits until [`Proc::listening_tcp`] or the process exits, at most `limit`.
    pub fn wait_listening(&mut self, port: u16, limit: Duration) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        while !self.listening_tcp(port) {
            if !self.running() {
                let out = self.kill_and_collect();
                return Err(io::Error::other(format!(
                    "{} exited before listening on port {port}: {}",
                    self.label,
                    out.stderr.trim()
                )));
            }
            if STOP.load(Relaxed) || Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "{}: not listening on port {port} after {} s",
                    self.label,
                    limit.as_secs()
                )));
            }
            thread::sleep(POLL);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of process `pid`, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / clock_ticks_per_second())
}

/// utime + stime (fields 14 and 15) of a /proc/<pid>/stat line. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Whether /proc/<pid>/net/<table> lists a socket in LISTEN state on local port `port`.
fn listening(pid: u32, table: &str, port: u16) -> bool {
    fs::read_to_string(format!("/proc/{pid}/net/{table}"))
        .map(|text| lists_listener(&text, port))
        .unwrap_or(false)
}

/// Whether a /proc/net/tcp(6) table has a LISTEN (state 0A) socket on local port `port`.
fn lists_listener(table: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let mut f = line.split_whitespace();
        let local = f.nth(1).unwrap_or("");
        let state = f.nth(1).unwrap_or("");
        local.ends_with(&want) && state == "0A"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 4 0 100 1000 10";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn listeners_are_found_by_port_and_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0100007F:D2F4 0100007F:1451 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0\n";
        assert!(lists_listener(table, 5201));
        assert!(!lists_listener(table, 53_988), "established, not listening");
        assert!(!lists_listener(table, 80));
    }

    #[test]
    fn a_process_past_its_limit_is_killed() {
        let ns_less = Command::new("sleep").arg("5").spawn().unwrap();
        let proc = Proc {
            label: "sleep".into(),
            child: ns_less,
            stdout: None,
            stderr: None,
        };
        let start = Instant::now();
        let err = proc.wait(Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("killed"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(cpu_seconds(std::process::id()).is_some());
    }
}
