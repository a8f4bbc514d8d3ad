//! Forward error correction: erasure codes over equal-length shards, and the framing that lets
//! variable-length packets ride in them.
//!
//! A FEC group is `data` shards followed by `parity` shards, all of one length. Any `data` of
//! them recover the missing data shards (the codes are MDS). Two codecs implement
//! [`ErasureCode`]:
//!
//! * [`Gf256Rs`]: a systematic Cauchy Reed-Solomon code over GF(2^8), with the SIMD slice kernels
//!   of `reed-solomon-erasure`. Its recovery solves only an m x m system for the m lost data
//!   shards, so its cost grows with what was lost, and it stays under 2 us for a (10,3) group.
//!   At most 256 shards in a group.
//! * [`LeopardRs`]: `reed-solomon-simd` (Leopard: FFT over GF(2^16)). Encoding is O(n log n),
//!   but every recovery pays a fixed ~200-400 us (measured here) for its error-locator
//!   transform over the whole field, which only large groups (interleaving against burst loss)
//!   amortise.
//!
//! [`Codec::new`] picks one by group size ([`Codec::GF256_MAX_SHARDS`]; the figures behind the
//! threshold are in BENCHMARKS.md, "FEC codecs (issue 5)").
//!
//! Both codecs take shards of any length: [`LeopardRs`] needs even lengths internally and
//! handles an odd last byte itself, callers never pad for it.
//!
//! Variable-length packets: [`pack`] writes a packet into a shard behind a 2-byte length prefix
//! and zero-pads it; [`unpack`] reads a recovered shard back. [`shard_len_for`] gives the shard
//! length of a group from its longest packet.
//!
//! Nothing here allocates per call once a codec is built (for [`LeopardRs`]: once it has seen
//! the group's shard length), and no input makes it panic: shapes, lengths and erasure patterns
//! are checked and reported as [`FecError`].

mod gf256;
mod leopard;

pub use gf256::Gf256Rs;
pub use leopard::LeopardRs;

/// Bytes of the length prefix [`pack`] puts in front of a packet.
pub const LEN_PREFIX: usize = 2;

/// The longest packet [`pack`] accepts (the length prefix is a `u16`).
pub const MAX_PACKET_LEN: usize = u16::MAX as usize;

/// Why an erasure-code operation failed. Nothing is written to the caller's buffers when an
/// error is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FecError {
    /// The codec cannot build a group of this many data and parity shards.
    #[error("unsupported FEC group shape: {data} data + {parity} parity shards")]
    Shape { data: usize, parity: usize },
    /// The number of shards passed does not match the group shape.
    #[error("expected {expected} shards, got {got}")]
    ShardCount { expected: usize, got: usize },
    /// Shards of one group differ in length, or the length is one the codec cannot take.
    #[error("shards of one FEC group differ in length or have an unsupported length")]
    ShardLength,
    /// Fewer shards are present than there are data shards: the group is unrecoverable.
    #[error("too few shards to recover the group: {present} present, {needed} needed")]
    TooFewShards { present: usize, needed: usize },
    /// The packet does not fit in the shard behind its length prefix.
    #[error("packet of {len} bytes does not fit in a shard of {shard_len} bytes")]
    PacketTooLong { len: usize, shard_len: usize },
    /// A recovered shard's length prefix points past its end.
    #[error("malformed length prefix in a recovered shard")]
    BadLengthPrefix,
    /// The underlying codec library refused the operation (a bug, not an input error).
    #[error("erasure codec failure")]
    Codec,
}

/// An erasure code over a group of `data_shards() + parity_shards()` equal-length shards,
/// indexed data first, then parity.
///
/// Methods take `&mut self` because codecs keep scratch buffers and reuse them across groups.
pub trait ErasureCode {
    /// Data shards in a group.
    fn data_shards(&self) -> usize;

    /// Parity shards in a group.
    fn parity_shards(&self) -> usize;

    /// All shards in a group.
    fn total_shards(&self) -> usize {
        self.data_shards() + self.parity_shards()
    }

    /// Computes the parity shards of `data` into `parity`. Every slice must have the same length
    /// (any length, zero included); `data.len()` and `parity.len()` must match the shape.
    fn encode<D, P>(&mut self, data: &[D], parity: &mut [P]) -> Result<(), FecError>
    where
        D: AsRef<[u8]>,
        P: AsMut<[u8]>;

    /// Recovers the missing data shards of a group in place.
    ///
    /// `shards` holds every shard of the group, all of one length: for `present[i]`, shard `i`
    /// as received; otherwise a buffer of that length whose content is ignored. Missing data
    /// shards are overwritten with their content; missing parity shards are not computed (their
    /// buffers are left untouched). Needs at least `data_shards()` shards present, otherwise
    /// [`FecError::TooFewShards`] and nothing is written.
    fn reconstruct<S>(&mut self, shards: &mut [S], present: &[bool]) -> Result<(), FecError>
    where
        S: AsRef<[u8]> + AsMut<[u8]>;
}

/// The erasure code for a group shape: [`Gf256Rs`] for groups of at most
/// [`Codec::GF256_MAX_SHARDS`] shards, [`LeopardRs`] above.
#[derive(Debug)]
pub enum Codec {
    Gf256(Gf256Rs),
    /// Boxed: its coders are several hundred bytes, and large groups are rare.
    Leopard(Box<LeopardRs>),
}

impl Codec {
    /// The largest group (data + parity shards) [`Codec::new`] gives to [`Gf256Rs`].
    ///
    /// Measured (BENCHMARKS.md, "FEC codecs (issue 5)", 1350-byte shards): a Leopard recovery
    /// costs a fixed ~200-400 us whatever was lost, while a GF(2^8) recovery costs ~45 ns per
    /// lost shard per data shard (1.3 us for 3 of (10,3), 45 us for 16 of (64,16)). Leopard
    /// encodes 3-7x faster from 64 shards up, but under real loss nearly every large group also
    /// needs a recovery: encode + maximum-loss recovery is 87 against 250 us at (64,16) and
    /// meets at (128,32) (433 against 415 us); with fewer losses GF(2^8) gains. Leopard takes
    /// the groups past that, up to 65536 shards.
    pub const GF256_MAX_SHARDS: usize = 128;

    /// The codec for `data` data and `parity` parity shards, picked by group size.
    pub fn new(data: usize, parity: usize) -> Result<Self, FecError> {
        if data.saturating_add(parity) <= Self::GF256_MAX_SHARDS {
            Gf256Rs::new(data, parity).map(Self::Gf256)
        } else {
            LeopardRs::new(data, parity).map(|c| Self::Leopard(Box::new(c)))
        }
    }
}

impl ErasureCode for Codec {
    fn data_shards(&self) -> usize {
        match self {
            Self::Gf256(c) => c.data_shards(),
            Self::Leopard(c) => c.data_shards(),
        }
    }

    fn parity_shards(&self) -> usize {
        match self {
            Self::Gf256(c) => c.parity_shards(),
            Self::Leopard(c) => c.parity_shards(),
        }
    }

    fn encode<D, P>(&mut self, data: &[D], parity: &mut [P]) -> Result<(), FecError>
    where
        D: AsRef<[u8]>,
        P: AsMut<[u8]>,
    {
        match self {
            Self::Gf256(c) => c.encode(data, parity),
            Self::Leopard(c) => c.encode(data, parity),
        }
    }

    fn reconstruct<S>(&mut self, shards: &mut [S], present: &[bool]) -> Result<(), FecError>
    where
        S: AsRef<[u8]> + AsMut<[u8]>,
    {
        match self {
            Self::Gf256(c) => c.reconstruct(shards, present),
            Self::Leopard(c) => c.reconstruct(shards, present),
        }
    }
}

/// The shard length of a group whose longest packet is `max_packet_len` bytes: the packet plus
/// its length prefix, rounded up to an even number (so [`LeopardRs`] takes its fast path; one
/// byte at most is wasted).
pub fn shard_len_for(max_packet_len: usize) -> Result<usize, FecError> {
    if max_packet_len > MAX_PACKET_LEN {
        return Err(FecError::PacketTooLong {
            len: max_packet_len,
            shard_len: MAX_PACKET_LEN + LEN_PREFIX,
        });
    }
    let len = max_packet_len + LEN_PREFIX;
    Ok(len + len % 2)
}

/// Writes `packet` into `shard` as a big-endian `u16` length, the packet, then zeroes to the end
/// of the shard. Both ends must build a data shard the same way, so the padding is always zero.
pub fn pack(packet: &[u8], shard: &mut [u8]) -> Result<(), FecError> {
    let too_long = FecError::PacketTooLong {
        len: packet.len(),
        shard_len: shard.len(),
    };
    let len = u16::try_from(packet.len()).map_err(|_| too_long)?;
    let (prefix, rest) = shard.split_at_mut_checked(LEN_PREFIX).ok_or(too_long)?;
    let (body, padding) = rest.split_at_mut_checked(packet.len()).ok_or(too_long)?;
    prefix.copy_from_slice(&len.to_be_bytes());
    body.copy_from_slice(packet);
    padding.fill(0);
    Ok(())
}

/// The packet in a shard written by [`pack`] (a recovered data shard). The padding is not
/// checked: a recovered shard is exactly what the sender packed, and a corrupted prefix that
/// still fits yields a packet that fails authentication later.
pub fn unpack(shard: &[u8]) -> Result<&[u8], FecError> {
    let (prefix, rest) = shard
        .split_first_chunk::<LEN_PREFIX>()
        .ok_or(FecError::BadLengthPrefix)?;
    let len = usize::from(u16::from_be_bytes(*prefix));
    rest.get(..len).ok_or(FecError::BadLengthPrefix)
}

/// Checks a group's shard count (from the lengths of its shards) and that every shard has one
/// length; returns that length.
fn common_len(
    expected: usize,
    mut lens: impl ExactSizeIterator<Item = usize>,
) -> Result<usize, FecError> {
    if lens.len() != expected {
        return Err(FecError::ShardCount {
            expected,
            got: lens.len(),
        });
    }
    let Some(len) = lens.next() else {
        return Ok(0);
    };
    if lens.all(|l| l == len) {
        Ok(len)
    } else {
        Err(FecError::ShardLength)
    }
}

/// Checks the arguments of `encode`: `data` and `parity` shards, all of one length; returns it.
fn check_encode<D: AsRef<[u8]>, P: AsMut<[u8]>>(
    shape: (usize, usize),
    data: &[D],
    parity: &mut [P],
) -> Result<usize, FecError> {
    let len = common_len(shape.0, data.iter().map(|s| s.as_ref().len()))?;
    let parity_len = common_len(shape.1, parity.iter_mut().map(|s| s.as_mut().len()))?;
    if parity_len == len {
        Ok(len)
    } else {
        Err(FecError::ShardLength)
    }
}

/// Checks a group passed to `reconstruct` of a `(data, parity)` code: shard and flag counts,
/// one shard length, at least `data` shards present. Returns the shard length.
fn check_group<S: AsRef<[u8]>>(
    (data, parity): (usize, usize),
    shards: &[S],
    present: &[bool],
) -> Result<usize, FecError> {
    let total = data + parity;
    if present.len() != total {
        return Err(FecError::ShardCount {
            expected: total,
            got: present.len(),
        });
    }
    let len = common_len(total, shards.iter().map(|s| s.as_ref().len()))?;
    let count = present.iter().filter(|p| **p).count();
    if count < data {
        return Err(FecError::TooFewShards {
            present: count,
            needed: data,
        });
    }
    Ok(len)
}

/// `(&shards[input], &mut shards[output])` for two distinct indices, both in bounds.
fn pair_mut<S: AsRef<[u8]> + AsMut<[u8]>>(
    shards: &mut [S],
    input: usize,
    output: usize,
) -> Option<(&[u8], &mut [u8])> {
    if input < output {
        let (low, high) = shards.split_at_mut(output);
        Some((low.get(input)?.as_ref(), high.first_mut()?.as_mut()))
    } else if output < input {
        let (low, high) = shards.split_at_mut(input);
        Some((high.first()?.as_ref(), low.get_mut(output)?.as_mut()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn pack_unpack_round_trip() {
        for len in [0, 1, 2, 1350, MAX_PACKET_LEN] {
            let packet: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let shard_len = shard_len_for(len).unwrap();
            assert!(shard_len >= len + LEN_PREFIX && shard_len.is_multiple_of(2));
            let mut shard = vec![0xee; shard_len + 5];
            pack(&packet, &mut shard).unwrap();
            assert_eq!(&shard[..2], &(len as u16).to_be_bytes());
            assert!(shard[2 + len..].iter().all(|b| *b == 0), "padding is zero");
            assert_eq!(unpack(&shard).unwrap(), &packet[..]);
        }
    }

    #[test]
    fn empty_packet_in_minimal_shard() {
        let mut shard = [0xff; 2];
        pack(&[], &mut shard).unwrap();
        assert_eq!(shard, [0, 0]);
        assert_eq!(unpack(&shard).unwrap(), &[] as &[u8]);
        assert_eq!(shard_len_for(0).unwrap(), 2);
        assert_eq!(shard_len_for(1).unwrap(), 4);
        assert_eq!(shard_len_for(1350).unwrap(), 1352);
    }

    #[test]
    fn pack_rejects_what_does_not_fit() {
        let mut shard = [0u8; 10];
        assert_eq!(
            pack(&[1; 9], &mut shard),
            Err(FecError::PacketTooLong {
                len: 9,
                shard_len: 10
            })
        );
        assert!(pack(&[], &mut shard[..1]).is_err());
        let big = vec![0u8; MAX_PACKET_LEN + 1];
        let mut shard = vec![0u8; MAX_PACKET_LEN + 3];
        assert!(pack(&big, &mut shard).is_err());
        assert!(shard_len_for(MAX_PACKET_LEN + 1).is_err());
        assert_eq!(shard_len_for(MAX_PACKET_LEN).unwrap(), MAX_PACKET_LEN + 3);
    }

    #[test]
    fn unpack_rejects_bad_prefixes() {
        assert_eq!(unpack(&[]), Err(FecError::BadLengthPrefix));
        assert_eq!(unpack(&[0]), Err(FecError::BadLengthPrefix));
        assert_eq!(unpack(&[0, 3, 1, 2]), Err(FecError::BadLengthPrefix));
        assert_eq!(unpack(&[0, 2, 1, 2]).unwrap(), &[1, 2]);
        assert_eq!(unpack(&[0xff, 0xff]), Err(FecError::BadLengthPrefix));
    }

    #[test]
    fn codec_picks_by_group_size() {
        assert!(matches!(Codec::new(10, 3), Ok(Codec::Gf256(_))));
        assert!(matches!(Codec::new(100, 28), Ok(Codec::Gf256(_))));
        assert!(matches!(Codec::new(100, 29), Ok(Codec::Leopard(_))));
        assert!(matches!(Codec::new(200, 40), Ok(Codec::Leopard(_))));
        assert!(Codec::new(0, 3).is_err());
        assert!(Codec::new(10, 0).is_err());
        assert!(Codec::new(usize::MAX, 1).is_err());
    }

    /// Encodes random data with `codec`, erases the shards in `lost` (indices modulo the group),
    /// reconstructs, and checks the result: exact data if at most `parity` shards were lost, an
    /// error and untouched buffers otherwise.
    pub(super) fn check_round_trip<C: ErasureCode>(
        codec: &mut C,
        len: usize,
        seed: u64,
        lost: &[usize],
    ) -> Result<(), TestCaseError> {
        let (d, p) = (codec.data_shards(), codec.parity_shards());
        let n = d + p;
        let mut x = seed | 1;
        let mut next = move || {
            // xorshift: deterministic filler, distinct per shard and byte.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        };
        let data: Vec<Vec<u8>> = (0..d).map(|_| (0..len).map(|_| next()).collect()).collect();
        let mut parity = vec![vec![0u8; len]; p];
        codec.encode(&data, &mut parity).unwrap();

        let mut present = vec![true; n];
        for &i in lost {
            present[i % n] = false;
        }
        let missing = present.iter().filter(|p| !**p).count();
        let mut shards: Vec<Vec<u8>> = data.iter().chain(parity.iter()).cloned().collect();
        for (shard, here) in shards.iter_mut().zip(&present) {
            if !here {
                shard.iter_mut().for_each(|b| *b = next());
            }
        }
        let before = shards.clone();
        let result = codec.reconstruct(&mut shards, &present);
        if missing > p {
            prop_assert_eq!(
                result,
                Err(FecError::TooFewShards {
                    present: n - missing,
                    needed: d
                })
            );
            prop_assert_eq!(shards, before, "nothing written on error");
        } else {
            prop_assert_eq!(result, Ok(()));
            for i in 0..d {
                prop_assert_eq!(&shards[i], &data[i], "data shard {} of ({},{})", i, d, p);
            }
            for i in d..n {
                prop_assert_eq!(&shards[i], &before[i], "parity buffers untouched");
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn codec_round_trip(
            d in 1usize..=120,
            p in 1usize..=40,
            len in 0usize..200,
            seed: u64,
            lost in proptest::collection::vec(0usize..160, 0..=42),
        ) {
            let mut codec = Codec::new(d, p).unwrap();
            check_round_trip(&mut codec, len, seed, &lost)?;
        }

        #[test]
        fn unpack_never_panics(shard in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(packet) = unpack(&shard) {
                prop_assert_eq!(packet.len(), usize::from(u16::from_be_bytes([shard[0], shard[1]])));
            }
        }
    }
}
