use super::formats::{self, block_bytes, decode, subs, QK};
use super::*;
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use half::f16;
use rand::{Rng, SeedableRng};

const ALL: [GgmlDType; 7] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q6K,
];

/// Row counts around the tiles (8 rows for AVX2, 16 in pairs for AVX-512).
const ROWS: [usize; 6] = [1, 3, 8, 9, 17, 33];

/// Widths for a format: not multiples of 256 where the format allows it.
fn widths(dtype: GgmlDType) -> &'static [usize] {
    match dtype {
        GgmlDType::Q4K | GgmlDType::Q6K => &[256, 768],
        _ => &[32, 64, 96, 800],
    }
}

/// `n` rows of random bytes in `dtype`'s blocks, with sane f16 scales: every bit pattern of
/// quants, high bits and packed sub-block scales turns up.
fn random_blocks(dtype: GgmlDType, n: usize, k: usize, rng: &mut impl Rng) -> Vec<u8> {
    let f = formats::id(dtype).unwrap();
    let per_block = subs(f) * QK;
    let mut w = vec![0u8; n * k / per_block * block_bytes(f)];
    rng.fill(&mut w[..]);
    let halves: &[usize] = match f {
        formats::Q4_1 | formats::Q5_1 | formats::Q4K => &[0, 2],
        formats::Q6K => &[208],
        _ => &[0],
    };
    for blk in w.chunks_exact_mut(block_bytes(f)) {
        for &at in halves {
            let v = f16::from_f32(rng.random_range(-0.1..0.1)).to_bits();
            blk[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    w
}

fn randn(rows: usize, cols: usize) -> Vec<f32> {
    Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Σ|w_i·x_i| over the decoded weights of row `j` and the quantized activations of row `r`:
/// the size of the rounding the float sums may do.
fn magnitude(f: u8, row: &[u8], acts: &Acts, r: usize) -> f32 {
    let mut sum = 0f32;
    for (wb, blk) in row.chunks_exact(block_bytes(f)).enumerate() {
        for j in 0..subs(f) {
            let w = decode(f, blk, j);
            let at = acts.at(wb * subs(f) + j, r);
            for i in 0..QK {
                let v = w.scale[i / 16] * w.q[i] as f32 + w.min;
                sum += (v * acts.d[at] * acts.qs[at * QK + i] as f32).abs();
            }
        }
    }
    sum
}

/// Every path equals the scalar reference, for every format, on random blocks and shapes that
/// are not multiples of the tiles, the thread chunks or 256.
#[test]
fn every_path_equals_the_scalar_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let paths = Simd::available();
    assert!(paths.contains(&Simd::Scalar));
    for dtype in ALL {
        let f = formats::id(dtype).unwrap();
        for &k in widths(dtype) {
            // Weight rows: not multiples of 16, and some over the serial limit with k = 800.
            for (n, m) in [1, 17, 45, 31, 45, 23].into_iter().zip(ROWS) {
                let w = random_blocks(dtype, n, k, &mut rng);
                let x = randn(m, k);
                let mut acts = Acts::default();
                acts.quantize(&x, m, k / QK);
                let row_bytes = w.len() / n;
                let mut reference = vec![0f32; m * n];
                let mut size = vec![0f32; m * n];
                let mut dst = vec![0f32; m];
                for j in 0..n {
                    let row = &w[j * row_bytes..(j + 1) * row_bytes];
                    scalar::row_dot(f, row, &acts, &mut dst);
                    for r in 0..m {
                        reference[r * n + j] = dst[r];
                        size[r * n + j] = magnitude(f, row, &acts, r);
                    }
                }
                for &simd in &paths {
                    let mut out = vec![f32::NAN; m * n];
                    matmul_with(simd, dtype, &w, n, k, &x, &mut out).unwrap();
                    for i in 0..m * n {
                        let (got, want) = (out[i], reference[i]);
                        assert!(
                            (got - want).abs() <= 1e-5 * size[i] + 1e-6,
                            "{dtype:?} {simd:?} {n}x{k} m={m} at ({}, {}): {got} vs {want}",
                            i / n,
                            i % n
                        );
                    }
                }
            }
        }
    }
}

/// A row gets exactly the same result alone as anywhere in a batch, on every path: batched
/// sampling must not change what a sequence would have produced by itself.
#[test]
fn a_row_gets_the_same_result_in_any_batch() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for (dtype, &k) in ALL
        .iter()
        .flat_map(|&d| widths(d).iter().map(move |k| (d, k)))
    {
        let (n, m) = (21, 19);
        let w = random_blocks(dtype, n, k, &mut rng);
        let x = randn(m, k);
        for simd in Simd::available() {
            let mut batch = vec![0f32; m * n];
            matmul_with(simd, dtype, &w, n, k, &x, &mut batch).unwrap();
            for r in [0, 1, 2, 9, 17, 18] {
                let mut alone = vec![0f32; n];
                matmul_with(simd, dtype, &w, n, k, &x[r * k..(r + 1) * k], &mut alone).unwrap();
                assert_eq!(
                    alone,
                    batch[r * n..(r + 1) * n],
                    "{dtype:?} {simd:?} row {r}"
                );
            }
        }
    }
}

/// Against the exact product with candle's dequantized weights only the rounding of the
/// activations to 8 bits remains: an error of at most d/2 per value, uniform, so the sum has a
/// standard deviation of sqrt(Σ w_i²·d_i²/12); a decoding mistake would be far beyond 6 of them.
#[test]
fn close_to_the_product_with_dequantized_weights() {
    for dtype in ALL {
        let (n, k, m) = (37, 768, 5);
        let t = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let deq: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let x = randn(m, k);
        let mut acts = Acts::default();
        acts.quantize(&x, m, k / QK);
        for simd in Simd::available() {
            let mut out = vec![0f32; m * n];
            matmul_with(simd, dtype, &q.data().unwrap(), n, k, &x, &mut out).unwrap();
            for r in 0..m {
                for j in 0..n {
                    let (w, xr) = (&deq[j * k..(j + 1) * k], &x[r * k..(r + 1) * k]);
                    let exact: f64 = w.iter().zip(xr).map(|(&w, &x)| w as f64 * x as f64).sum();
                    let var: f64 = (0..k)
                        .map(|i| (w[i] as f64 * acts.d[acts.at(i / QK, r)] as f64).powi(2) / 12.0)
                        .sum();
                    let err = (out[r * n + j] as f64 - exact).abs();
                    assert!(
                        err <= 6.0 * var.sqrt() + 1e-4,
                        "{dtype:?} {simd:?} ({r}, {j}): {} vs exact {exact}, σ {}",
                        out[r * n + j],
                        var.sqrt()
                    );
                }
            }
        }
    }
}

/// Products run from many threads at once (each quantizes into its own scratch) and from
/// inside rayon tasks, whose threads also run the product's own tasks.
/// A gated MLP gives the down product of the gate of its two products, with the same bits
/// as those three steps one after the other, on every path: split between the threads (the
/// middle width 224, not a multiple of 64) and done on one (32).
#[test]
fn a_gated_mlp_is_its_three_steps() {
    fn rows(dtype: GgmlDType, data: &[u8], n: usize) -> Weight<'_> {
        Weight::Rows { dtype, data, n }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let gate = |y: &mut [f32], g: &[f32], u: &[f32]| {
        for ((y, g), u) in y.iter_mut().zip(g).zip(u) {
            *y = g.max(0.0) * u;
        }
    };
    for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4K] {
        for (n, k, m, out) in [(224, 512, 8, 96), (32, 256, 1, 40)] {
            let (wg, wu) = (
                random_blocks(dtype, n, k, &mut rng),
                random_blocks(dtype, n, k, &mut rng),
            );
            // Q4_K needs widths of 256, so the down weight is Q8_0.
            let wd = random_blocks(GgmlDType::Q8_0, out, n, &mut rng);
            let ws = [
                rows(dtype, &wg, n),
                rows(dtype, &wu, n),
                rows(GgmlDType::Q8_0, &wd, out),
            ];
            let x = randn(m, k);
            for simd in Simd::available() {
                let (mut g, mut u) = (vec![0f32; m * n], vec![0f32; m * n]);
                matmul_many_with(simd, &ws[..2], k, &x, &mut [&mut g, &mut u]).unwrap();
                let mut y = vec![0f32; m * n];
                gate(&mut y, &g, &u);
                let mut want = vec![0f32; m * out];
                matmul_many_with(simd, &ws[2..], n, &y, &mut [&mut want]).unwrap();
                let mut got = vec![f32::NAN; m * out];
                matmul_mlp_with(simd, ws, k, &x, &gate, &mut got).unwrap();
                assert_eq!(got, want, "{dtype:?} {simd:?} {n}x{k}, {m} rows");
            }
        }
    }
    // The pair's weights must have as many rows, and a multiple of 32.
    let w = random_blocks(GgmlDType::Q8_0, 33, 256, &mut rng);
    let per_row = w.len() / 33;
    let wd = random_blocks(GgmlDType::Q8_0, 8, 32, &mut rng);
    let x = randn(1, 256);
    let mut out = vec![0f32; 8];
    let (g32, g33) = (
        rows(GgmlDType::Q8_0, &w[..32 * per_row], 32),
        rows(GgmlDType::Q8_0, &w, 33),
    );
    let d = rows(GgmlDType::Q8_0, &wd, 8);
    assert!(matmul_mlp([g32, g33, d], 256, &x, &gate, &mut out).is_err());
    assert!(matmul_mlp([g33, g33, d], 256, &x, &gate, &mut out).is_err());
    assert!(matmul_mlp([g32, g32, d], 256, &x, &gate, &mut out).is_ok());
}

#[test]
fn concurrent_products_agree() {
    let (n, k, m) = (64, 512, 9);
    let t = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, GgmlDType::Q4K).unwrap();
    let w = q.data().unwrap();
    let xs: Vec<Vec<f32>> = (0..8).map(|_| randn(m, k)).collect();
    let one = |x: &Vec<f32>| {
        let mut out = vec![0f32; m * n];
        matmul(GgmlDType::Q4K, &w, n, k, x, &mut out).unwrap();
        out
    };
    let serial: Vec<Vec<f32>> = xs.iter().map(one).collect();
    let parallel: Vec<Vec<f32>> = xs.par_iter().map(one).collect();
    assert_eq!(serial, parallel);
}

#[test]
fn bad_formats_and_shapes_are_errors() {
    let mut out = vec![0f32; 1];
    let err = |r: Result<()>| r.unwrap_err().to_string();
    assert!(err(matmul(GgmlDType::Q2K, &[], 1, 256, &[0.0; 256], &mut out)).contains("Q2K"));
    // K-quants come in blocks of 256.
    let e = err(matmul(
        GgmlDType::Q4K,
        &[0; 144],
        1,
        32,
        &[0.0; 32],
        &mut out,
    ));
    assert!(e.contains("multiple of 256"), "{e}");
    let e = err(matmul(
        GgmlDType::Q8_0,
        &[0; 10],
        1,
        32,
        &[0.0; 32],
        &mut out,
    ));
    assert!(e.contains("shapes do not match"), "{e}");
    let e = err(matmul(
        GgmlDType::Q8_0,
        &[0; 34],
        1,
        32,
        &[0.0; 33],
        &mut out,
    ));
    assert!(e.contains("divide"), "{e}");
    let mut two = vec![0f32; 2];
    assert!(matmul(GgmlDType::Q8_0, &[0; 34], 1, 32, &[0.0; 32], &mut two).is_err());
}

#[test]
fn the_path_comes_from_the_environment_values() {
    let best = *Simd::available().last().unwrap();
    assert_eq!(Simd::choose(None, false).unwrap(), best);
    assert_eq!(Simd::choose(None, true).unwrap(), Simd::Scalar);
    assert_eq!(Simd::choose(Some("Scalar"), false).unwrap(), Simd::Scalar);
    let e = Simd::choose(Some("avx9"), false).unwrap_err().to_string();
    assert!(e.contains("use scalar, avx2, avx512 or amx"), "{e}");
    for (name, simd) in [
        ("avx2", Simd::Avx2),
        ("avx512", Simd::Avx512),
        ("amx", Simd::Amx),
    ] {
        match Simd::choose(Some(name), false) {
            Ok(s) => assert_eq!(s, simd),
            Err(e) => assert!(!Simd::available().contains(&simd), "{e}"),
        }
    }
}
