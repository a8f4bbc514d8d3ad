//! The epoll backend (placeholder until the readiness backend lands in this change).

use std::io;
use std::time::Duration;

use super::{Buffers, Completion, IoOp, Received, Token};

#[derive(Debug)]
pub(super) struct Epoll {}

impl Epoll {
    pub(super) fn new() -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the epoll backend is not built yet",
        ))
    }

    pub(super) fn push(
        &mut self,
        _token: Token,
        _op: IoOp,
        _udp: &mut Buffers,
        _tcp: &mut Buffers,
    ) {
    }

    pub(super) fn reap(
        &mut self,
        _out: &mut Vec<Completion>,
        _udp: &mut Buffers,
        _tcp: &mut Buffers,
    ) {
    }

    pub(super) fn wait(
        &mut self,
        _timeout: Option<Duration>,
        _udp: &mut Buffers,
        _tcp: &mut Buffers,
    ) -> io::Result<()> {
        Ok(())
    }

    pub(super) fn received(&self, _bid: u16, _len: usize) -> Option<Received> {
        None
    }
}
