//! [`LeopardRs`]: `reed-solomon-simd` (Leopard-RS, FFT over GF(2^16)) for large groups.
//!
//! The library wants even shard lengths (a GF(2^16) symbol is two bytes). An odd length is
//! split: the even prefix goes through Leopard, the last byte of every shard forms a column of
//! 1-byte shards coded with [`Gf256Rs`] (possible up to 256 shards in a group; beyond that odd
//! lengths are refused, and [`super::shard_len_for`] never produces one).
//!
//! The encoder and decoder keep their work buffers between groups; they are rebuilt only when
//! the shard length changes (or after a library error, so a half-fed coder is never reused).

use std::fmt;

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use super::{ErasureCode, FecError, Gf256Rs, check_encode, check_group};

/// Leopard Reed-Solomon over GF(2^16) (`reed-solomon-simd`), for large groups.
pub struct LeopardRs {
    data: usize,
    parity: usize,
    /// Encoder and the (even) shard length it was built for.
    encoder: Option<(ReedSolomonEncoder, usize)>,
    /// Decoder and the (even) shard length it was built for.
    decoder: Option<(ReedSolomonDecoder, usize)>,
    /// The code for the last byte of odd-length shards, if the group is small enough for it.
    tail: Option<Gf256Rs>,
    tail_data: Vec<[u8; 1]>,
    tail_parity: Vec<[u8; 1]>,
    tail_shards: Vec<[u8; 1]>,
}

impl fmt::Debug for LeopardRs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeopardRs")
            .field("data", &self.data)
            .field("parity", &self.parity)
            .field("encoder_len", &self.encoder.as_ref().map(|e| e.1))
            .field("decoder_len", &self.decoder.as_ref().map(|d| d.1))
            .finish_non_exhaustive()
    }
}

impl LeopardRs {
    /// A code with `data` data and `parity` parity shards, both at least 1, in a shape
    /// `reed-solomon-simd` supports (up to 32768 of either and 65536 in all, with limits on
    /// the ratio).
    pub fn new(data: usize, parity: usize) -> Result<Self, FecError> {
        if data == 0 || parity == 0 || !ReedSolomonEncoder::supports(data, parity) {
            return Err(FecError::Shape { data, parity });
        }
        let tail = Gf256Rs::new(data, parity).ok();
        let tail_len = |n: usize| if tail.is_some() { n } else { 0 };
        Ok(Self {
            data,
            parity,
            encoder: None,
            decoder: None,
            tail_data: vec![[0]; tail_len(data)],
            tail_parity: vec![[0]; tail_len(parity)],
            tail_shards: vec![[0]; tail_len(data + parity)],
            tail,
        })
    }

    fn encoder(&mut self, len: usize) -> Result<&mut ReedSolomonEncoder, FecError> {
        let (data, parity) = (self.data, self.parity);
        let fresh = match self.encoder.take() {
            // Same length: the encoder resets itself after each `encode`.
            Some((e, l)) if l == len => Ok(e),
            Some((mut e, _)) => e.reset(data, parity, len).map(|()| e),
            None => ReedSolomonEncoder::new(data, parity, len),
        };
        let e = fresh.map_err(|_| FecError::ShardLength)?;
        Ok(&mut self.encoder.insert((e, len)).0)
    }

    fn decoder(&mut self, len: usize) -> Result<&mut ReedSolomonDecoder, FecError> {
        let (data, parity) = (self.data, self.parity);
        let fresh = match self.decoder.take() {
            Some((d, l)) if l == len => Ok(d),
            Some((mut d, _)) => d.reset(data, parity, len).map(|()| d),
            None => ReedSolomonDecoder::new(data, parity, len),
        };
        let d = fresh.map_err(|_| FecError::ShardLength)?;
        Ok(&mut self.decoder.insert((d, len)).0)
    }

    /// Leopard encoding of the first `even` bytes of every shard. On error the encoder is
    /// dropped (it may hold some of the shards) and nothing is written.
    fn encode_even<D, P>(
        &mut self,
        data: &[D],
        parity: &mut [P],
        even: usize,
    ) -> Result<(), FecError>
    where
        D: AsRef<[u8]>,
        P: AsMut<[u8]>,
    {
        let encoder = self.encoder(even)?;
        let result = data
            .iter()
            .try_for_each(|s| {
                encoder.add_original_shard(s.as_ref().get(..even).unwrap_or_default())
            })
            .and_then(|()| encoder.encode())
            .map_err(|_| FecError::Codec)
            .and_then(|out| {
                // Check all before writing any.
                if (0..parity.len()).all(|i| out.recovery(i).is_some_and(|r| r.len() == even)) {
                    for (i, p) in parity.iter_mut().enumerate() {
                        if let (Some(dst), Some(src)) =
                            (p.as_mut().get_mut(..even), out.recovery(i))
                        {
                            dst.copy_from_slice(src);
                        }
                    }
                    Ok(())
                } else {
                    Err(FecError::Codec)
                }
            });
        if result.is_err() {
            self.encoder = None;
        }
        result
    }

    /// Leopard recovery of the first `even` bytes of the lost data shards.
    fn reconstruct_even<S>(
        &mut self,
        shards: &mut [S],
        present: &[bool],
        even: usize,
    ) -> Result<(), FecError>
    where
        S: AsRef<[u8]> + AsMut<[u8]>,
    {
        let data = self.data;
        let decoder = self.decoder(even)?;
        // Exactly `data` shards: the present data, then present parity to make up the count.
        let mut fed = 0;
        let mut result = Ok(());
        for (i, shard) in shards.iter().enumerate() {
            if fed == data || result.is_err() {
                break;
            }
            if !present.get(i).copied().unwrap_or(false) {
                continue;
            }
            let shard = shard.as_ref().get(..even).unwrap_or_default();
            result = if i < data {
                decoder.add_original_shard(i, shard)
            } else {
                decoder.add_recovery_shard(i - data, shard)
            };
            fed += 1;
        }
        let result = result
            .and_then(|()| decoder.decode())
            .map_err(|_| FecError::Codec)
            .and_then(|out| {
                let lost = || (0..data).filter(|&j| !present.get(j).copied().unwrap_or(true));
                if lost().all(|j| out.restored_original(j).is_some_and(|r| r.len() == even)) {
                    for j in lost() {
                        if let (Some(dst), Some(src)) = (
                            shards.get_mut(j).and_then(|s| s.as_mut().get_mut(..even)),
                            out.restored_original(j),
                        ) {
                            dst.copy_from_slice(src);
                        }
                    }
                    Ok(())
                } else {
                    Err(FecError::Codec)
                }
            });
        if result.is_err() {
            self.decoder = None;
        }
        result
    }
}

impl ErasureCode for LeopardRs {
    fn data_shards(&self) -> usize {
        self.data
    }

    fn parity_shards(&self) -> usize {
        self.parity
    }

    fn encode<D, P>(&mut self, data: &[D], parity: &mut [P]) -> Result<(), FecError>
    where
        D: AsRef<[u8]>,
        P: AsMut<[u8]>,
    {
        let len = check_encode((self.data, self.parity), data, parity)?;
        let even = len & !1;
        if even != len && self.tail.is_none() {
            return Err(FecError::ShardLength);
        }
        if even > 0 {
            self.encode_even(data, parity, even)?;
        }
        if even != len
            && let Some(tail) = &mut self.tail
        {
            for (t, s) in self.tail_data.iter_mut().zip(data) {
                t[0] = s.as_ref().get(even).copied().unwrap_or(0);
            }
            tail.encode(&self.tail_data, &mut self.tail_parity)?;
            for (t, p) in self.tail_parity.iter().zip(parity.iter_mut()) {
                if let Some(b) = p.as_mut().get_mut(even) {
                    *b = t[0];
                }
            }
        }
        Ok(())
    }

    fn reconstruct<S>(&mut self, shards: &mut [S], present: &[bool]) -> Result<(), FecError>
    where
        S: AsRef<[u8]> + AsMut<[u8]>,
    {
        let len = check_group((self.data, self.parity), shards, present)?;
        if present.iter().take(self.data).all(|p| *p) || len == 0 {
            return Ok(());
        }
        let even = len & !1;
        if even != len && self.tail.is_none() {
            return Err(FecError::ShardLength);
        }
        if even > 0 {
            self.reconstruct_even(shards, present, even)?;
        }
        if even != len
            && let Some(tail) = &mut self.tail
        {
            for (t, s) in self.tail_shards.iter_mut().zip(shards.iter()) {
                t[0] = s.as_ref().get(even).copied().unwrap_or(0);
            }
            tail.reconstruct(&mut self.tail_shards, present)?;
            for ((t, s), here) in self
                .tail_shards
                .iter()
                .zip(shards.iter_mut())
                .zip(present)
                .take(self.data)
            {
                if !here && let Some(b) = s.as_mut().get_mut(even) {
                    *b = t[0];
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::tests::check_round_trip;
    use super::*;

    #[test]
    fn shapes() {
        assert!(LeopardRs::new(1, 1).is_ok());
        assert!(LeopardRs::new(1000, 100).is_ok());
        assert!(LeopardRs::new(0, 1).is_err());
        assert!(LeopardRs::new(1, 0).is_err());
        assert!(LeopardRs::new(40000, 40000).is_err());
    }

    #[test]
    fn odd_lengths_beyond_256_shards_are_refused() {
        let mut rs = LeopardRs::new(300, 10).unwrap();
        let data = vec![vec![1u8; 5]; 300];
        let mut parity = vec![vec![0u8; 5]; 10];
        assert_eq!(rs.encode(&data, &mut parity), Err(FecError::ShardLength));
        let data = vec![vec![1u8; 6]; 300];
        let mut parity = vec![vec![0u8; 6]; 10];
        assert_eq!(rs.encode(&data, &mut parity), Ok(()));
        check_round_trip(&mut rs, 6, 3, &[0, 17, 299, 305, 42]).unwrap();
    }

    #[test]
    fn shard_length_changes_between_groups() {
        let mut rs = LeopardRs::new(40, 30).unwrap();
        for (len, seed) in [(1350, 1), (64, 2), (1351, 3), (1, 4), (1350, 5)] {
            let lost: Vec<usize> = (0..30).map(|i| i * 2 + seed).collect();
            check_round_trip(&mut rs, len, seed as u64, &lost).unwrap();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Large shapes, odd and even lengths: any `parity` erasures recover exactly.
        #[test]
        fn any_k_of_n_recover(
            (d, p) in prop_oneof![Just((64, 8)), Just((100, 20)), Just((128, 32)), Just((200, 56)), Just((20, 60))],
            len in 0usize..200,
            seed: u64,
            lost in proptest::collection::vec(0usize..256, 0..=60),
        ) {
            let mut rs = LeopardRs::new(d, p).unwrap();
            check_round_trip(&mut rs, len, seed, &lost)?;
        }
    }
}
