//! Bounds-checked byte cursors and QUIC-style variable-length integers (RFC 9000 §16).

use super::WireError;

/// The largest value a varint can carry (2^62 - 1).
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// Encoded size of `v` as a varint (1, 2, 4 or 8 bytes).
pub const fn varint_len(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        8
    }
}

/// Reads from a byte slice; every read checks the remaining length.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        let (&b, rest) = self.buf.split_first().ok_or(WireError::Truncated)?;
        self.buf = rest;
        Ok(b)
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let bytes = self.bytes(N)?;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn varint(&mut self) -> Result<u64, WireError> {
        let first = self.u8()?;
        let len = 1usize << (first >> 6);
        let mut v = u64::from(first & 0x3f);
        for _ in 1..len {
            v = (v << 8) | u64::from(self.u8()?);
        }
        Ok(v)
    }

    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Writes into a fixed byte slice; every write checks the remaining space.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn u8(&mut self, v: u8) -> Result<(), WireError> {
        self.bytes(&[v])
    }

    pub fn u32(&mut self, v: u32) -> Result<(), WireError> {
        self.bytes(&v.to_be_bytes())
    }

    pub fn bytes(&mut self, data: &[u8]) -> Result<(), WireError> {
        let end = self.pos + data.len();
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(WireError::BufferTooSmall)?;
        dst.copy_from_slice(data);
        self.pos = end;
        Ok(())
    }

    /// Writes `v` as a varint. Values above [`VARINT_MAX`] are a caller bug and are refused.
    pub fn varint(&mut self, v: u64) -> Result<(), WireError> {
        if v > VARINT_MAX {
            return Err(WireError::Malformed);
        }
        match varint_len(v) {
            1 => self.u8(v as u8),
            2 => self.bytes(&((v as u16) | 0x4000).to_be_bytes()),
            4 => self.bytes(&((v as u32) | 0x8000_0000).to_be_bytes()),
            _ => self.bytes(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
        }
    }

    /// Forgets everything written after `len` bytes (undoes a partial write that failed).
    pub fn rollback(&mut self, len: usize) {
        self.pos = self.pos.min(len);
    }

    /// Runs `f`, undoing whatever it wrote if it fails, so a frame is written whole or not at all.
    pub fn atomic<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, WireError>,
    ) -> Result<T, WireError> {
        let start = self.pos;
        let result = f(self);
        if result.is_err() {
            self.rollback(start);
        }
        result
    }

    /// The written prefix.
    pub fn written(&self) -> &[u8] {
        &self.buf[..self.pos]
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn varint_round_trips(v in 0..=VARINT_MAX) {
            let mut buf = [0u8; 8];
            let mut w = Writer::new(&mut buf);
            w.varint(v).unwrap();
            prop_assert_eq!(w.len(), varint_len(v));
            let n = w.len();
            let mut r = Reader::new(&buf[..n]);
            prop_assert_eq!(r.varint().unwrap(), v);
            prop_assert!(r.is_empty());
        }
    }

    #[test]
    fn truncated_varint_is_an_error() {
        let mut r = Reader::new(&[0xc0, 1, 2]);
        assert_eq!(r.varint(), Err(WireError::Truncated));
    }

    #[test]
    fn atomic_writes_leave_nothing_behind_on_failure() {
        let mut buf = [0u8; 4];
        let mut w = Writer::new(&mut buf);
        w.u8(9).unwrap();
        let r = w.atomic(|w| {
            w.u8(1)?;
            w.varint(VARINT_MAX + 1)
        });
        assert_eq!(r, Err(WireError::Malformed));
        assert_eq!(w.written(), &[9]);
    }

    #[test]
    fn writer_refuses_overflow() {
        let mut buf = [0u8; 1];
        let mut w = Writer::new(&mut buf);
        assert_eq!(w.varint(64), Err(WireError::BufferTooSmall));
        assert_eq!(w.varint(VARINT_MAX + 1), Err(WireError::Malformed));
    }
}
