//! Seeded standard-normal noise with one independent stream per sample, so that sample b of a
//! batch drawn with seed S is the same as sample 0 of a batch drawn with seed S + b.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// SplitMix64 (Steele, Lea & Flood 2014): a small, well-mixed 64-bit generator.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator at `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1), never 0.
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// `n` standard normals (Box–Muller).
    pub fn normals(&mut self, n: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let (u, v) = (self.next_open01(), self.next_open01());
            let r = (-2.0 * u.ln()).sqrt();
            let a = std::f64::consts::TAU * v;
            out.push(r * a.cos());
            out.push(r * a.sin());
        }
        out.truncate(n);
        out
    }
}

/// The per-sample seed of sample 0 of the noise set that run seed `seed` draws (sample b:
/// this + b), a well-mixed 64-bit value: the sets of different run seeds do not overlap. (With
/// `seed + b` itself, the 100 pairs of seeds 0 and 1 would share 99 noises, and runs with
/// "different" seeds would be nearly the same run.)
pub fn set_seed(seed: u64) -> u64 {
    SplitMix64::new(seed ^ 0x5e75_eed5_5e75_eed5).next_u64()
}

/// Standard-normal noise [batch, ...shape]; sample b uses seed `seed + b`.
pub fn standard_normal(
    seed: u64,
    batch: usize,
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let per: usize = shape.iter().product();
    let mut data = Vec::with_capacity(batch * per);
    for b in 0..batch {
        data.extend(SplitMix64::new(seed.wrapping_add(b as u64)).normals(per));
    }
    let mut dims = vec![batch];
    dims.extend_from_slice(shape);
    Ok(Tensor::from_vec(data, dims, device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_unit_moments_and_per_sample_streams() {
        let x = SplitMix64::new(7).normals(200_000);
        let mean = x.iter().sum::<f64>() / x.len() as f64;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / x.len() as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.01,
            "{mean} {var}"
        );
        let a = standard_normal(5, 3, &[2, 2], DType::F64, &Device::Cpu).unwrap();
        let b = standard_normal(7, 1, &[2, 2], DType::F64, &Device::Cpu).unwrap();
        let a2: Vec<f64> = a.get(2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let b0: Vec<f64> = b.get(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a2, b0);
    }

    #[test]
    fn the_sets_of_neighbouring_run_seeds_are_disjoint() {
        let bases: Vec<u64> = (0..64).map(set_seed).collect();
        for (i, a) in bases.iter().enumerate() {
            for b in &bases[i + 1..] {
                // 10^6 samples per set would still not reach the next set.
                assert!(a.abs_diff(*b) > 1_000_000, "{a} {b}");
            }
        }
        assert_eq!(set_seed(3), set_seed(3));
    }
}
