//! A small seeded random number generator whose stream never changes between versions, so
//! that tensors generated from a seed (random test weights, test inputs) are reproducible
//! across machines, releases and languages (SplitMix64, then Box–Muller for normals).

use candle_core::{Device, Tensor};

use crate::Result;

/// SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Shuffles `v` in place (Fisher–Yates, from the last element down).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next_u64() % (i as u64 + 1)) as usize);
        }
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller, one value per call).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// An f64 tensor of normals with standard deviation `std` (convert with `to_dtype`).
    pub fn normal_tensor(&mut self, shape: &[usize], std: f64, device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| self.normal() * std).collect();
        Ok(Tensor::from_vec(v, shape, device)?)
    }

    /// An f64 tensor uniform in `[lo, hi)`.
    pub fn uniform_tensor(&mut self, shape: &[usize], lo: f64, hi: f64, device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| lo + (hi - lo) * self.uniform()).collect();
        Ok(Tensor::from_vec(v, shape, device)?)
    }

    /// `bytes` with one to four random edits (bit flips, random or boundary bytes, little-endian
    /// boundary integers, removed, repeated or truncated runs): the mutation step of the
    /// seeded fuzz tests of every reader of untrusted bytes.
    pub fn mutate(&mut self, bytes: &[u8]) -> Vec<u8> {
        const BOUNDARY: [u64; 8] = [0, 1, 0x7f, 0xff, 0x7fff_ffff, 0xffff_ffff, 1 << 62, u64::MAX];
        let mut b = bytes.to_vec();
        for _ in 0..1 + self.next_u64() % 4 {
            if b.is_empty() {
                b.push(self.next_u64() as u8);
                continue;
            }
            let n = b.len() as u64;
            let i = (self.next_u64() % n) as usize;
            match self.next_u64() % 7 {
                0 => b[i] ^= 1 << (self.next_u64() % 8),
                1 => b[i] = self.next_u64() as u8,
                2 => b[i] = [0u8, 0x7f, 0x80, 0xff][(self.next_u64() % 4) as usize],
                3 => {
                    let v = BOUNDARY[(self.next_u64() % BOUNDARY.len() as u64) as usize].to_le_bytes();
                    let k = (b.len() - i).min(1 << (self.next_u64() % 4));
                    b[i..i + k].copy_from_slice(&v[..k]);
                }
                4 => {
                    let k = ((self.next_u64() % 64) as usize).min(b.len() - i);
                    b.drain(i..i + k);
                }
                5 => {
                    let k = ((self.next_u64() % 64) as usize).min(b.len() - i);
                    let run: Vec<u8> = b[i..i + k].to_vec();
                    b.splice(i..i, run);
                }
                _ => b.truncate(i),
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::SeededRng;

    #[test]
    fn a_shuffle_is_a_permutation_fixed_by_the_seed() {
        let shuffled = |seed| {
            let mut v: Vec<usize> = (0..25).collect();
            SeededRng::new(seed).shuffle(&mut v);
            v
        };
        let a = shuffled(7);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..25).collect::<Vec<_>>());
        assert_eq!(a, shuffled(7));
        assert_ne!(a, shuffled(8));
        assert_ne!(a, (0..25).collect::<Vec<_>>());
    }
}
