//! Float functions for the hot loops, in plain operations the compiler vectorizes: the
//! library's `expf` and `tanhf` are one call per value.

/// Evaluates `$call` (a call of an `#[inline(always)]` function) compiled for AVX-512 or AVX2
/// where the CPU has them, for plain loops the compiler vectorizes: the default build
/// targets x86-64 (SSE2). Rust forms no fused multiply-adds on its own, so the results are
/// the same bits on every path. It returns from the function it is in: write it as the
/// whole body.
macro_rules! simd_here {
    ($call:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512<T>(f: impl FnOnce() -> T) -> T {
                f()
            }
            #[target_feature(enable = "avx2")]
            unsafe fn avx2<T>(f: impl FnOnce() -> T) -> T {
                f()
            }
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: this CPU has AVX-512F.
                return unsafe { avx512(|| $call) };
            }
            if is_x86_feature_detected!("avx2") {
                // SAFETY: this CPU has AVX2.
                return unsafe { avx2(|| $call) };
            }
        }
        $call
    }};
}
pub(crate) use simd_here;

/// `f` of the f32 values of `t`, borrowed from its storage when it is a contiguous f32 CPU
/// tensor (a decode step's activations: copying each out showed as 5 % of an 8-row step in
/// `memmove`), else of a copy.
pub fn with_f32<R>(t: &candle_core::Tensor, f: impl FnOnce(&[f32]) -> R) -> anyhow::Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(c), Some((from, to))) =
            (&*storage, layout.contiguous_offsets())
        {
            if let Ok(v) = c.as_slice::<f32>() {
                return Ok(f(&v[from..to]));
            }
        }
    }
    let v: Vec<f32> = t
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    Ok(f(&v))
}

/// v rounded to the nearest integer (ties to even), for |v| < 2^22: adding 1.5·2^23 pushes
/// the fraction out of the mantissa, and the sum's bits then differ from 1.5·2^23's by the
/// integer. Plain float and integer adds that vectorize, unlike `round` (a library call on
/// x86-64 without SSE4.1) and `as i32` (a saturating conversion).
#[inline(always)]
pub fn round_to_int(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

/// e^x, within a few ulp, for x in [−87, 88] (clamped there: e^−87 ≈ 1.6e−38 and
/// e^88 ≈ 1.7e38 are the ends of the normal f32 range). Range reduction x = n·ln2 + r and
/// the polynomial for e^r are Cephes's `expf` (Stephen L. Moshier, Cephes Math Library,
/// `expf.c`: C1, C2 and the p terms).
#[inline]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let ni = round_to_int(x * LOG2E);
    let n = ni as f32;
    let r = x - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let er = p * r * r + r + 1.0;
    // 2^n through the exponent bits: n is in [−126, 127] after the clamp.
    er * f32::from_bits(((ni + 127) as u32) << 23)
}

/// GELU, tanh form: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) (Hendrycks and Gimpel,
/// "Gaussian Error Linear Units", 2016; ggml's `ggml_gelu` and candle's `gelu` use the same
/// constants), written as x / (1 + e^(−2u)), since 0.5·(1 + tanh u) = 1 / (1 + e^(−2u)).
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const A: f32 = 0.044_715;
    let u = SQRT_2_OVER_PI * (x + A * x * x * x);
    x / (1.0 + exp(-2.0 * u))
}

/// SiLU, x·σ(x) = x / (1 + e^(−x)).
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_takes_ties_to_even() {
        for (v, want) in [
            (2.5, 2),
            (3.5, 4),
            (-2.5, -2),
            (-0.4, 0),
            (126.6, 127),
            (-127.0, -127),
        ] {
            assert_eq!(round_to_int(v), want, "{v}");
        }
    }

    #[test]
    fn exp_matches_the_library() {
        for i in 0..35000 {
            let x = -87.0 + i as f32 * 0.005;
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 4.0 * f32::EPSILON * want,
                "e^{x}: {got} vs {want}"
            );
        }
        assert!(exp(-200.0) < 1e-37 && exp(200.0).is_finite());
    }

    #[test]
    fn gelu_matches_the_tanh_formula() {
        for i in 0..4000 {
            let x = -20.0 + i as f64 * 0.01;
            let want = 0.5
                * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
            let got = f64::from(gelu_tanh(x as f32));
            assert!(
                (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "gelu({x}): {got} vs {want}"
            );
        }
    }
}
