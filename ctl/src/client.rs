//! A blocking client for the engine's control socket: one request line out, one response line in.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engine_api::control::{Command, MAX_LINE_LEN, ParseError, Request, Response};

/// How long the engine may take to answer before ctl gives up. The engine answers from counters
/// it already holds, so anything near this means it is wedged.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to a running engine.
#[derive(Debug)]
pub(crate) struct Client {
    path: PathBuf,
    stream: BufReader<UnixStream>,
}

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("cannot reach the engine at {}: {} ({})", path.display(), describe(error), hint(error))]
    Connect { path: PathBuf, error: io::Error },
    #[error("lost the connection to the engine at {}: {}", path.display(), describe(error))]
    Io { path: PathBuf, error: io::Error },
    #[error("the engine at {} did not answer within {} s", path.display(), TIMEOUT.as_secs())]
    Timeout { path: PathBuf },
    #[error("the engine at {} closed the connection without answering", path.display())]
    Closed { path: PathBuf },
    #[error("the engine at {} sent an answer ctl does not understand: {error}", path.display())]
    Malformed { path: PathBuf, error: ParseError },
}

impl Client {
    /// Connects to the engine's control socket at `path`.
    pub(crate) fn connect(path: &Path) -> Result<Self, ClientError> {
        let connect = || {
            let stream = UnixStream::connect(path)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            stream.set_write_timeout(Some(TIMEOUT))?;
            Ok(stream)
        };
        match connect() {
            Ok(stream) => Ok(Self {
                path: path.to_owned(),
                stream: BufReader::new(stream),
            }),
            Err(error) => Err(ClientError::Connect {
                path: path.to_owned(),
                error,
            }),
        }
    }

    /// Sends `command` and waits for the engine's answer.
    pub(crate) fn request(&mut self, command: Command) -> Result<Response, ClientError> {
        let line = Request::new(command).to_line();
        self.stream
            .get_mut()
            .write_all(&line)
            .map_err(|error| self.io_error(error))?;

        let mut answer = Vec::new();
        // One byte over the limit is enough to tell an overlong line from a full one.
        let limit = u64::try_from(MAX_LINE_LEN)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let read = (&mut self.stream)
            .take(limit)
            .read_until(b'\n', &mut answer)
            .map_err(|error| self.io_error(error))?;
        if read == 0 {
            return Err(ClientError::Closed {
                path: self.path.clone(),
            });
        }
        Response::parse(&answer).map_err(|error| ClientError::Malformed {
            path: self.path.clone(),
            error,
        })
    }

    fn io_error(&self, error: io::Error) -> ClientError {
        let path = self.path.clone();
        match error.kind() {
            // A read timeout surfaces as WouldBlock on Linux.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout { path },
            // Writing to a socket the engine has already closed fails before the read would
            // have seen the end of the stream; both mean the same thing.
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof => ClientError::Closed { path },
            _ => ClientError::Io { path, error },
        }
    }
}

/// What an operator should do about a failed connect.
fn hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::PermissionDenied => {
            "the control socket is open only to the engine's user: run ctl as that user or as root"
        }
        io::ErrorKind::ConnectionRefused => {
            "the engine is not running; the socket is left over from an earlier run"
        }
        _ => "is it running?",
    }
}

/// The OS's description of an error without the " (os error N)" suffix, which means nothing to
/// an operator.
fn describe(error: &io::Error) -> String {
    let text = error.to_string();
    match error.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .map_or_else(|| text.clone(), str::to_owned),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::thread;

    use super::*;

    fn socket_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("coretun-ctl-{}-{name}.sock", std::process::id()))
    }

    #[test]
    fn connect_error_reads_well() {
        let path = socket_path("absent");
        let err = Client::connect(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach the engine at {}: No such file or directory (is it running?)",
                path.display()
            )
        );
    }

    #[test]
    fn connect_errors_say_what_to_do() {
        let path = PathBuf::from("/run/coretun/engine.sock");
        let err = |code| ClientError::Connect {
            path: path.clone(),
            error: io::Error::from_raw_os_error(code),
        };
        assert_eq!(
            err(libc_eacces()).to_string(),
            "cannot reach the engine at /run/coretun/engine.sock: Permission denied (the control \
             socket is open only to the engine's user: run ctl as that user or as root)"
        );
        assert_eq!(
            err(111).to_string(),
            "cannot reach the engine at /run/coretun/engine.sock: Connection refused (the engine \
             is not running; the socket is left over from an earlier run)"
        );
    }

    /// EACCES on Linux.
    fn libc_eacces() -> i32 {
        13
    }

    #[test]
    fn describe_strips_os_error_code() {
        let err = io::Error::from_raw_os_error(111);
        assert_eq!(describe(&err), "Connection refused");
        let err = io::Error::other("custom");
        assert_eq!(describe(&err), "custom");
    }

    fn reloaded() -> Response {
        Response::Reloaded {
            maps: 3,
            changes: vec!["map 3 added (tcp 127.0.0.1:9000 -> peer edge)".into()],
            restart_needed: Vec::new(),
        }
    }

    #[test]
    fn request_and_answers() {
        let path = socket_path("serve");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            reader.read_until(b'\n', &mut line).unwrap();
            let request = Request::parse(&line).unwrap();
            assert_eq!(request.command, Command::Reload);
            reader.get_mut().write_all(&reloaded().to_line()).unwrap();
            line.clear();
            reader.read_until(b'\n', &mut line).unwrap();
            reader.get_mut().write_all(b"not json\n").unwrap();
            line.clear();
            reader.read_until(b'\n', &mut line).unwrap();
            // Then hang up without answering.
        });

        let mut client = Client::connect(&path).unwrap();
        assert_eq!(client.request(Command::Reload).unwrap(), reloaded());
        assert!(matches!(
            client.request(Command::Status),
            Err(ClientError::Malformed { .. })
        ));
        assert!(matches!(
            client.request(Command::Status),
            Err(ClientError::Closed { .. })
        ));
        server.join().unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
