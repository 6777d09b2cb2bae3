//! `Rng`: the toolkit's seeded random numbers (SplitMix64), the same on every machine. Library code
//! draws from an `Rng` it is given a seed for, never from libtorch's global generator, so that
//! nothing a caller seeded is reseeded behind its back.

use tch::Tensor;

use crate::error::Result;

/// Deterministic 64-bit mixing (SplitMix64): a hash of `x`, so that a draw can depend only on
/// (seed, step) as the training batches do; also the step of [`Rng`].
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// Deterministic 64-bit random numbers (SplitMix64).
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5851f42d4c957f2d)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let out = splitmix(self.0);
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        out
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `k` distinct values from 0..n.
    pub fn distinct(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::with_capacity(k);
        while out.len() < k {
            let x = self.below(n);
            if !out.contains(&x) {
                out.push(x);
            }
        }
        out
    }

    /// Uniform in (0, 1), never 0 or 1.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box-Muller, one draw per pair of uniforms).
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Standard normal draws of `shape`, f32 on the CPU.
    pub fn normal_tensor(&mut self, shape: &[i64]) -> Result<Tensor> {
        let n: i64 = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.normal() as f32).collect();
        Ok(Tensor::f_from_slice(&v)?.f_reshape(shape)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_unit_variance_and_repeat_by_seed() {
        let mut rng = Rng::new(3);
        let v: Vec<f64> = (0..20_000).map(|_| rng.normal()).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.03, "mean {mean}, variance {var}");
        assert_eq!(Rng::new(3).normal(), v[0]);
        assert_ne!(Rng::new(4).normal(), v[0]);
    }
}
