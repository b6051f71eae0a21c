//! Quantized matmul with batch reuse: each weight block is unpacked once and multiplied with
//! every activation row, so B rows cost far less than B separate products.
//!
//! Activations are quantized to 8 bits in blocks of 32 (one f32 scale per block), and weight
//! blocks are multiplied with integer dot products, as llama.cpp does (`ggml-quants.c`:
//! `quantize_row_q8_1`, `ggml_vec_dot_q4_1_q8_1`, `ggml_vec_dot_q8_0_q8_0`). Block layouts are
//! ggml's: Q8_0 = {f16 d, i8 qs[32]} (34 bytes), Q4_1 = {f16 d, f16 m, u8 qs[16]} (20 bytes,
//! value j in the low nibble of qs[j], value j+16 in the high one), x = d·q (+ m).
//!
//! The AVX2 path is chosen at run time; the scalar path is the reference it is tested against.
use anyhow::{bail, Result};
use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

/// Values per block, for every format here.
const QK: usize = 32;

/// One block of 32 quantized activations.
#[derive(Clone, Copy, Debug)]
pub struct ActBlock {
    /// Scale: x ≈ d·q.
    d: f32,
    /// d·Σq, for formats with an offset (Q4_1's m).
    s: f32,
    qs: [i8; QK],
}

/// Formats with a kernel here.
pub fn supported(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q8_0 | GgmlDType::Q4_1)
}

fn block_bytes(dtype: GgmlDType) -> usize {
    match dtype {
        GgmlDType::Q8_0 => 34,
        GgmlDType::Q4_1 => 20,
        _ => 0,
    }
}

/// Quantizes rows of values (each a multiple of 32 long) to 8-bit blocks, row after row.
pub fn quantize_acts(x: &[f32]) -> Vec<ActBlock> {
    x.chunks_exact(QK)
        .map(|c| {
            let amax = c.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut qs = [0i8; QK];
            let mut sum = 0i32;
            for (q, v) in qs.iter_mut().zip(c) {
                *q = (v * id).round() as i8;
                sum += *q as i32;
            }
            ActBlock {
                d,
                s: d * sum as f32,
                qs,
            }
        })
        .collect()
}

/// out[m][n] = x[m][k] · w[n][k]ᵀ, where `w` holds `n` rows of quantized blocks.
pub fn matmul(
    dtype: GgmlDType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    out: &mut [f32],
) -> Result<()> {
    if !supported(dtype) || !k.is_multiple_of(QK) {
        bail!("no quantized kernel for {dtype:?} with k = {k}");
    }
    let m = x.len() / k;
    let bpr = k / QK;
    let row_bytes = bpr * block_bytes(dtype);
    if w.len() != n * row_bytes || out.len() != m * n {
        bail!("quantized matmul: shapes do not match the data");
    }
    let acts = quantize_acts(x);
    // Output rows of the weight are split between threads; each chunk fills a column block
    // of `out` laid out as [n][m], transposed back at the end (m is small).
    let mut out_t = vec![0f32; n * m];
    let chunk = 16;
    let avx2 = has_avx2();
    out_t
        .par_chunks_mut(chunk * m)
        .enumerate()
        .for_each(|(c, dst)| {
            let first = c * chunk;
            for (i, d) in dst.chunks_mut(m).enumerate() {
                let row = &w[(first + i) * row_bytes..(first + i + 1) * row_bytes];
                if avx2 {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: AVX2 and FMA were detected at run time.
                    unsafe {
                        avx2::row_dot(dtype, row, &acts, bpr, d)
                    }
                } else {
                    scalar_row_dot(dtype, row, &acts, bpr, d);
                }
            }
        });
    for j in 0..n {
        for r in 0..m {
            out[r * n + j] = out_t[j * m + r];
        }
    }
    Ok(())
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::env::var_os("CONCLAVE_NO_SIMD").is_none() {
            return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        }
    }
    false
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// One weight row against every activation row: out[r] = Σ_blocks dot(w_b, x_{r,b}).
pub fn scalar_row_dot(
    dtype: GgmlDType,
    row: &[u8],
    acts: &[ActBlock],
    bpr: usize,
    out: &mut [f32],
) {
    out.fill(0.0);
    let bb = block_bytes(dtype);
    for b in 0..bpr {
        let blk = &row[b * bb..(b + 1) * bb];
        let mut vals = [0i32; QK];
        let (d, m) = match dtype {
            GgmlDType::Q8_0 => {
                for (v, &q) in vals.iter_mut().zip(&blk[2..34]) {
                    *v = q as i8 as i32;
                }
                (f16_at(blk, 0), 0.0)
            }
            _ => {
                for j in 0..16 {
                    vals[j] = (blk[4 + j] & 0x0F) as i32;
                    vals[j + 16] = (blk[4 + j] >> 4) as i32;
                }
                (f16_at(blk, 0), f16_at(blk, 2))
            }
        };
        for (r, o) in out.iter_mut().enumerate() {
            let a = &acts[r * bpr + b];
            let dot: i32 = vals.iter().zip(&a.qs).map(|(&w, &x)| w * x as i32).sum();
            *o += d * a.d * dot as f32 + m * a.s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{f16_at, ActBlock};
    use candle_core::quantized::GgmlDType;
    use std::arch::x86_64::*;

    /// Activation rows handled per pass over the weight row (accumulators stay in registers).
    const TILE: usize = 8;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_dot(
        dtype: GgmlDType,
        row: &[u8],
        acts: &[ActBlock],
        bpr: usize,
        out: &mut [f32],
    ) {
        let m = out.len();
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0F);
        let q4 = dtype == GgmlDType::Q4_1;
        let bb = super::block_bytes(dtype);
        let mut start = 0;
        while start < m {
            let rows = TILE.min(m - start);
            let mut acc = [_mm256_setzero_ps(); TILE];
            let mut offs = [0f32; TILE];
            for b in 0..bpr {
                let blk = row.as_ptr().add(b * bb);
                let blk_s = std::slice::from_raw_parts(blk, bb);
                let d = f16_at(blk_s, 0);
                // The weight block, unpacked once for all rows of the tile.
                let (wq, signed) = if q4 {
                    let raw = _mm_loadu_si128(blk.add(4) as *const __m128i);
                    let both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
                    (_mm256_and_si256(both, low), false)
                } else {
                    (_mm256_loadu_si256(blk.add(2) as *const __m256i), true)
                };
                let mw = if q4 { f16_at(blk_s, 2) } else { 0.0 };
                // maddubs multiplies unsigned by signed bytes: move Q8_0's signs onto x.
                let wabs = if signed { _mm256_sign_epi8(wq, wq) } else { wq };
                for r in 0..rows {
                    let a = &acts[(start + r) * bpr + b];
                    let x = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                    let x = if signed { _mm256_sign_epi8(x, wq) } else { x };
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, x), ones);
                    let scale = _mm256_set1_ps(d * a.d);
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[r]);
                    offs[r] += mw * a.s;
                }
            }
            for r in 0..rows {
                out[start + r] = hsum(acc[r]) + offs[r];
            }
            start += rows;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    fn weights(dtype: GgmlDType, n: usize, k: usize) -> (QTensor, Vec<f32>) {
        let t = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let deq: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (q, deq)
    }

    fn acts(m: usize, k: usize) -> Vec<f32> {
        Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// The SIMD path equals the scalar reference, for shapes that are not multiples of the
    /// tile (8 rows), the thread chunk (16 weight rows) or 256.
    #[test]
    fn simd_equals_scalar_reference() {
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
            for (n, k, m) in [(1, 32, 1), (17, 96, 3), (40, 576, 9), (33, 640, 17)] {
                let (q, _) = weights(dtype, n, k);
                let x = acts(m, k);
                let data = q.data().unwrap();
                let mut fast = vec![0f32; m * n];
                matmul(dtype, &data, n, k, &x, &mut fast).unwrap();
                let a = quantize_acts(&x);
                let bpr = k / QK;
                let row_bytes = bpr * block_bytes(dtype);
                for j in 0..n {
                    let mut reference = vec![0f32; m];
                    scalar_row_dot(
                        dtype,
                        &data[j * row_bytes..(j + 1) * row_bytes],
                        &a,
                        bpr,
                        &mut reference,
                    );
                    for r in 0..m {
                        let (f, s) = (fast[r * n + j], reference[r]);
                        assert!(
                            (f - s).abs() <= 1e-4 * (1.0 + s.abs()),
                            "{dtype:?} {n}x{k} m={m}: {f} vs {s}"
                        );
                    }
                }
            }
        }
    }

    /// Against the exact product with dequantized weights, only activation rounding remains.
    #[test]
    fn close_to_the_dequantized_product() {
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
            let (n, k, m) = (24, 576, 5);
            let (q, deq) = weights(dtype, n, k);
            let x = acts(m, k);
            let mut out = vec![0f32; m * n];
            matmul(dtype, &q.data().unwrap(), n, k, &x, &mut out).unwrap();
            for r in 0..m {
                for j in 0..n {
                    let exact: f32 = (0..k).map(|i| x[r * k + i] * deq[j * k + i]).sum();
                    // 8-bit activations: relative error ~1/127 per term, ~sqrt(k) terms.
                    assert!(
                        (out[r * n + j] - exact).abs() < 0.5,
                        "{dtype:?}: {} vs {exact}",
                        out[r * n + j]
                    );
                }
            }
        }
    }

    #[test]
    fn unsupported_formats_and_bad_shapes_are_errors() {
        let mut out = vec![0f32; 1];
        assert!(matmul(GgmlDType::Q6K, &[], 1, 256, &[0.0; 256], &mut out).is_err());
        assert!(matmul(GgmlDType::Q8_0, &[0; 10], 1, 32, &[0.0; 32], &mut out).is_err());
    }
}
