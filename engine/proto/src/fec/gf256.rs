//! [`Gf256Rs`]: systematic Cauchy Reed-Solomon over GF(2^8) for small groups.
//!
//! The bulk work (a constant times a slice, xor-ed into another) runs in `reed-solomon-erasure`'s
//! SIMD kernels; the matrix algebra is ours, because a recovery only needs to solve an m x m
//! system for the m lost data shards. `reed-solomon-erasure`'s own `ReedSolomon` inverts the
//! whole data x data matrix behind a mutex-guarded LRU cache and needs a shard slice of
//! `(buffer, present)` pairs, i.e. an allocation per call.
//!
//! Code: parity row `i` of the generator is the Cauchy row `1 / (x_i + y_j)` with
//! `x_i = data + i`, `y_j = j`. Every square submatrix of a Cauchy matrix is invertible, so
//! `[I; C]` is MDS: any `data` shards determine the group.

use reed_solomon_erasure::galois_8::{div, mul};

use super::{ErasureCode, FecError, check_encode, check_group, pair_mut};

/// Whether `reed-solomon-erasure`'s C kernels may run here. With `simd-accel` they are compiled
/// for x86-64 with `-march=haswell` and would fault on a CPU without that instruction set, so
/// there the portable loops below take over (same results, slower).
fn simd_kernels_usable() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        // What -march=haswell lets the compiler use, vector and scalar.
        *USABLE.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("bmi1")
                && std::arch::is_x86_feature_detected!("bmi2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("lzcnt")
                && std::arch::is_x86_feature_detected!("movbe")
                && std::arch::is_x86_feature_detected!("popcnt")
                && std::arch::is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// `out = c * input`, elementwise over GF(2^8).
fn mul_slice(c: u8, input: &[u8], out: &mut [u8]) {
    if simd_kernels_usable() {
        reed_solomon_erasure::galois_8::mul_slice(c, input, out);
    } else {
        portable_mul_slice(c, input, out);
    }
}

/// `out ^= c * input`, elementwise over GF(2^8).
fn mul_slice_xor(c: u8, input: &[u8], out: &mut [u8]) {
    if simd_kernels_usable() {
        reed_solomon_erasure::galois_8::mul_slice_xor(c, input, out);
    } else {
        portable_mul_slice_xor(c, input, out);
    }
}

fn portable_mul_slice(c: u8, input: &[u8], out: &mut [u8]) {
    for (o, &i) in out.iter_mut().zip(input) {
        *o = mul(c, i);
    }
}

fn portable_mul_slice_xor(c: u8, input: &[u8], out: &mut [u8]) {
    for (o, &i) in out.iter_mut().zip(input) {
        *o ^= mul(c, i);
    }
}

/// GF(2^8) has 256 elements, so at most 256 distinct evaluation points: data + parity <= 256.
const MAX_SHARDS: usize = 256;

/// A Cauchy Reed-Solomon code over GF(2^8), for groups of at most 256 shards.
#[derive(Debug, Clone)]
pub struct Gf256Rs {
    data: usize,
    parity: usize,
    /// The parity rows of the generator, `parity x data`, row-major.
    matrix: Vec<u8>,
    // Scratch reused by every recovery, sized at construction.
    /// Lost data shard indices.
    lost: Vec<usize>,
    /// Parity rows (0-based within the parity shards) standing in for the lost data shards.
    rows: Vec<usize>,
    /// `[A | I]`, `m x 2m`, reduced to `[I | A^-1]`.
    work: Vec<u8>,
    /// Decode coefficients, `m x data`: column `j` multiplies data shard `j` (when present).
    coef: Vec<u8>,
}

impl Gf256Rs {
    /// A code with `data` data and `parity` parity shards: both at least 1, at most 256 in all.
    pub fn new(data: usize, parity: usize) -> Result<Self, FecError> {
        if data == 0 || parity == 0 || data.saturating_add(parity) > MAX_SHARDS {
            return Err(FecError::Shape { data, parity });
        }
        let mut matrix = Vec::with_capacity(parity * data);
        for i in 0..parity {
            for j in 0..data {
                // data + i <= 255 and j < data: the two points differ, so their sum is non-zero.
                let x = (data + i) as u8;
                let y = j as u8;
                matrix.push(div(1, x ^ y));
            }
        }
        Ok(Self {
            data,
            parity,
            matrix,
            lost: Vec::with_capacity(parity),
            rows: Vec::with_capacity(parity),
            work: vec![0; 2 * parity * parity],
            coef: vec![0; parity * data],
        })
    }

    /// Fills `self.coef` for the lost shards in `self.lost` recovered from the parity rows in
    /// `self.rows`: with `A = C[rows][lost]` and `B = C[rows][present data]`, the lost data is
    /// `A^-1 P_rows + A^-1 B D_present` (characteristic 2: minus is plus).
    /// Row `a` of `coef` takes `A^-1 B` in the present data columns and `A^-1` is left in
    /// `work`'s right half.
    fn solve(&mut self) -> Result<(), FecError> {
        let m = self.lost.len();
        let w = 2 * m;
        // [A | I]
        for (r, &row) in self.rows.iter().enumerate() {
            for (c, &col) in self.lost.iter().enumerate() {
                self.work[r * w + c] = self.matrix[row * self.data + col];
                self.work[r * w + m + c] = u8::from(r == c);
            }
        }
        // Gauss-Jordan. A Cauchy submatrix is never singular; the check is for robustness.
        for col in 0..m {
            let pivot = (col..m)
                .find(|&r| self.work[r * w + col] != 0)
                .ok_or(FecError::Codec)?;
            if pivot != col {
                for c in 0..w {
                    self.work.swap(pivot * w + c, col * w + c);
                }
            }
            let scale = div(1, self.work[col * w + col]);
            for c in 0..w {
                self.work[col * w + c] = mul(self.work[col * w + c], scale);
            }
            for r in (0..m).filter(|&r| r != col) {
                let factor = self.work[r * w + col];
                if factor != 0 {
                    for c in 0..w {
                        let v = mul(factor, self.work[col * w + c]);
                        self.work[r * w + c] ^= v;
                    }
                }
            }
        }
        // coef[a][j] = sum_i A^-1[a][i] * C[rows[i]][j], a row at a time in the SIMD kernels
        // (m x m x d products: scalar, they dominated large recoveries). Columns of lost shards
        // get values too; they are never used.
        let d = self.data;
        for (a, out) in self.coef.chunks_exact_mut(d).take(m).enumerate() {
            for (i, &row) in self.rows.iter().enumerate() {
                let c = self.work[a * w + m + i];
                let src = &self.matrix[row * d..(row + 1) * d];
                if i == 0 {
                    mul_slice(c, src, out);
                } else {
                    mul_slice_xor(c, src, out);
                }
            }
        }
        Ok(())
    }
}

impl ErasureCode for Gf256Rs {
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
        if len == 0 {
            // The SIMD kernels index the first byte.
            return Ok(());
        }
        // Input-major: each data shard is read once and multiplied into every parity shard
        // (all of which stay in L1 for small groups).
        for (j, input) in data.iter().enumerate() {
            let input = input.as_ref();
            for (i, out) in parity.iter_mut().enumerate() {
                let c = self.matrix[i * self.data + j];
                if j == 0 {
                    mul_slice(c, input, out.as_mut());
                } else {
                    mul_slice_xor(c, input, out.as_mut());
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
        self.lost.clear();
        self.lost.extend((0..self.data).filter(|&j| !present[j]));
        if self.lost.is_empty() || len == 0 {
            return Ok(());
        }
        // As many present parity rows as lost data shards: there are enough, since at least
        // `data` shards are present.
        let m = self.lost.len();
        self.rows.clear();
        self.rows
            .extend((0..self.parity).filter(|&i| present[self.data + i]).take(m));
        if self.rows.len() != m {
            return Err(FecError::Codec);
        }
        self.solve()?;

        let w = 2 * m;
        for a in 0..m {
            let out = self.lost[a];
            let mut first = true;
            let parity_inputs = self
                .rows
                .iter()
                .enumerate()
                .map(|(i, &row)| (self.data + row, self.work[a * w + m + i]));
            let data_inputs = (0..self.data)
                .filter(|&j| present[j])
                .map(|j| (j, self.coef[a * self.data + j]));
            for (input, c) in data_inputs.chain(parity_inputs) {
                let (input, output) = pair_mut(shards, input, out).ok_or(FecError::Codec)?;
                if first {
                    mul_slice(c, input, output);
                    first = false;
                } else if c != 0 {
                    mul_slice_xor(c, input, output);
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
        assert!(Gf256Rs::new(1, 1).is_ok());
        assert!(Gf256Rs::new(255, 1).is_ok());
        assert!(Gf256Rs::new(128, 128).is_ok());
        for (d, p) in [(0, 1), (1, 0), (256, 1), (200, 57), (usize::MAX, 2)] {
            assert_eq!(
                Gf256Rs::new(d, p).unwrap_err(),
                FecError::Shape { data: d, parity: p }
            );
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let mut rs = Gf256Rs::new(3, 2).unwrap();
        let data = [[1u8; 4]; 3];
        let mut parity = [[0u8; 4]; 2];
        assert!(rs.encode(&data[..2], &mut parity).is_err());
        assert!(rs.encode(&data, &mut parity[..1]).is_err());
        let mut short = [[0u8; 3]; 2];
        assert_eq!(rs.encode(&data, &mut short), Err(FecError::ShardLength));
        let ragged: [&[u8]; 3] = [&[1, 2], &[3, 4], &[5]];
        assert_eq!(rs.encode(&ragged, &mut parity), Err(FecError::ShardLength));

        rs.encode(&data, &mut parity).unwrap();
        let mut shards = vec![
            vec![1u8; 4],
            vec![1; 4],
            vec![1; 4],
            parity[0].to_vec(),
            vec![],
        ];
        assert_eq!(
            rs.reconstruct(&mut shards, &[false, true, true, true, false]),
            Err(FecError::ShardLength)
        );
        assert!(rs.reconstruct(&mut shards, &[true; 4]).is_err());
        assert!(rs.reconstruct(&mut shards[..4], &[true; 4]).is_err());
    }

    #[test]
    fn the_largest_group_recovers() {
        let mut rs = Gf256Rs::new(200, 56).unwrap();
        let lost: Vec<usize> = (0..56).map(|i| i * 3).collect();
        check_round_trip(&mut rs, 64, 7, &lost).unwrap();
    }

    #[test]
    fn the_portable_kernels_compute_what_the_simd_ones_do() {
        // Both ends of a session must compute identical parity whatever their CPU.
        let input: Vec<u8> = (0..1500u32).map(|i| (i * 151 + 7) as u8).collect();
        for c in [0u8, 1, 2, 0x53, 0xff] {
            let (mut a, mut b) = (vec![0x11u8; 1500], vec![0x11u8; 1500]);
            mul_slice(c, &input, &mut a);
            portable_mul_slice(c, &input, &mut b);
            assert_eq!(a, b);
            mul_slice_xor(c, &input, &mut a);
            portable_mul_slice_xor(c, &input, &mut b);
            assert_eq!(a, b);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any `parity` erasures of a (1..=20, 1..=5) group recover every data shard exactly;
        /// more are an error.
        #[test]
        fn any_k_of_n_recover(
            d in 1usize..=20,
            p in 1usize..=5,
            len in 0usize..300,
            seed: u64,
            lost in proptest::collection::vec(0usize..25, 0..=7),
        ) {
            let mut rs = Gf256Rs::new(d, p).unwrap();
            check_round_trip(&mut rs, len, seed, &lost)?;
        }

        /// The codec's scratch is reused: one codec over many groups and erasure patterns.
        #[test]
        fn one_codec_many_groups(
            seeds in proptest::collection::vec((any::<u64>(), proptest::collection::vec(0usize..13, 0..=4)), 1..8),
        ) {
            let mut rs = Gf256Rs::new(10, 3).unwrap();
            for (seed, lost) in seeds {
                check_round_trip(&mut rs, 1350, seed, &lost)?;
            }
        }
    }
}
