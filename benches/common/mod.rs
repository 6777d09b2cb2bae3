//! Timing helpers shared by the benchmark programs.
#![allow(dead_code)]

use std::time::Instant;

use interp::interp_core::tch::{Device, Kind, Tensor};

/// Fastest of `repeats` timed runs after a warm-up: the estimate least disturbed by a noisy host.
pub fn min_secs(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..repeats)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// GFLOP/s of one torch GEMM [m, k] x [k, n] into a preallocated output.
pub fn gemm_gflops(m: i64, k: i64, n: i64, repeats: usize) -> f64 {
    let a = Tensor::randn([m, k], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([k, n], (Kind::Float, Device::Cpu));
    let out = Tensor::empty([m, n], (Kind::Float, Device::Cpu));
    let secs = min_secs(repeats, || {
        let _ = a.matmul_out(&out, &b);
    });
    2.0 * (m * k * n) as f64 / secs / 1e9
}

/// The median of `values`.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}
