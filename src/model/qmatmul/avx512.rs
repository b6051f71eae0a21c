//! The AVX-512 VNNI kernel: a 512-bit register holds the same 32 unpacked weight bytes twice
//! and the activations of two rows (adjacent in the block-major layout), and one `vpdpbusd`
//! makes the 4-byte dot products of both rows, where AVX2 needs `maddubs` + `madd` per row.
//! Q8_0 is made unsigned by adding 128 (offset −128·d): `vpdpbusd` sums into 32 bits, so
//! unlike `maddubs` it cannot overflow on 255·127.
use super::acts::Acts;
use super::avx2::{hsum, lane_scales, quants, scales, Scales, SUMS};
use super::formats::{block_bytes, subs, Q6K, Q8_0, QK};
use super::Out;
use std::arch::x86_64::*;
use std::ops::Range;

/// Activation rows per pass over a weight row, in pairs (8 accumulators of 32).
const TILE: usize = 16;

/// Weight rows `rows` of `w` against every activation row, into `out`.
///
/// # Safety
/// AVX-512 F/BW/DQ/VL/VNNI, AVX2, FMA and F16C must be present; `w` holds whole rows of
/// `acts.blocks` blocks of 32.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,avx512vl,avx2,fma,f16c")]
pub unsafe fn rows<const F: u8>(w: &[u8], rows: Range<usize>, acts: &Acts, out: Out) {
    let row_bytes = acts.blocks / subs(F) * block_bytes(F);
    for j in rows {
        let row = w[j * row_bytes..(j + 1) * row_bytes].as_ptr();
        if acts.rows == 1 {
            out.write(0, j, single::<F>(row, acts));
            continue;
        }
        for r0 in (0..acts.rows).step_by(TILE) {
            let n = TILE.min(acts.rows - r0);
            let res = tile::<F>(row, acts, r0, n);
            for (r, &v) in res[..n].iter().enumerate() {
                out.write(r0 + r, j, v);
            }
        }
    }
}

/// The block's scales; for Q8_0 with the offset −128·d that `unsigned_quants` calls for.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unsigned_scales<const F: u8>(blk: *const u8) -> Scales {
    let mut sc = scales::<F>(blk);
    if F == Q8_0 {
        sc.m = [-128.0 * sc.d[0]; 16];
    }
    sc
}

/// The 32 quants of sub-block `j` as unsigned bytes, as `vpdpbusd` takes its first operand:
/// Q8_0's signed ones shifted by +128.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unsigned_quants<const F: u8>(blk: *const u8, j: usize) -> __m256i {
    let q = quants::<F>(blk, j);
    if F == Q8_0 {
        _mm256_xor_si256(q, _mm256_set1_epi8(-128))
    } else {
        q
    }
}

/// One weight row against activation rows r0..r0+n (n ≤ TILE, r0 even).
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn tile<const F: u8>(row: *const u8, acts: &Acts, r0: usize, n: usize) -> [f32; TILE] {
    let pairs = n.div_ceil(2);
    let live: __mmask16 = if n >= 16 { !0 } else { (1 << n) - 1 };
    // Spreads two adjacent row scales over the two 256-bit halves.
    let halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let mut acc = [[_mm512_setzero_ps(); TILE / 2]; SUMS];
    let mut offs = [_mm512_setzero_ps(); SUMS];
    let (qs, d) = (acts.qs.as_ptr(), acts.d.as_ptr());
    for wb in 0..acts.blocks / subs(F) {
        let blk = row.add(wb * block_bytes(F));
        let sc = unsigned_scales::<F>(blk);
        for j in 0..subs(F) {
            let q = unsigned_quants::<F>(blk, j);
            let ab = wb * subs(F) + j;
            let at = acts.at(ab, r0);
            let w = _mm512_broadcast_i64x4(q);
            let wsc = _mm256_castps_pd(lane_scales::<F>(&sc, j));
            let wsc = _mm512_castpd_ps(_mm512_broadcast_f64x4(wsc));
            let (acc, offs) = (&mut acc[ab % SUMS], &mut offs[ab % SUMS]);
            for (p, acc) in acc.iter_mut().enumerate() {
                if p < pairs {
                    let x = _mm512_loadu_si512(qs.add((at + 2 * p) * QK) as *const __m512i);
                    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
                    let d2 = _mm_castpd_ps(_mm_load_sd(d.add(at + 2 * p) as *const f64));
                    let ad = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(d2));
                    let s = _mm512_mul_ps(wsc, ad);
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, *acc);
                }
            }
            let s = _mm512_maskz_loadu_ps(live, acts.s.as_ptr().add(at));
            *offs = _mm512_fmadd_ps(_mm512_set1_ps(sc.m[2 * j + 1]), s, *offs);
            if F == Q6K {
                let lo = _mm512_maskz_loadu_ps(live, acts.s_lo.as_ptr().add(at));
                let dm = sc.m[2 * j] - sc.m[2 * j + 1];
                *offs = _mm512_fmadd_ps(_mm512_set1_ps(dm), lo, *offs);
            }
        }
    }
    let mut res = [0f32; TILE];
    _mm512_storeu_ps(res.as_mut_ptr(), _mm512_add_ps(offs[0], offs[1]));
    for p in 0..pairs {
        let sum = _mm512_add_ps(acc[0][p], acc[1][p]);
        res[2 * p] += hsum(_mm512_castps512_ps256(sum));
        res[2 * p + 1] += hsum(_mm512_extractf32x8_ps(sum, 1));
    }
    res
}

/// One weight row against a lone activation row (decoding one sequence), where half of each
/// pair would be padding: the low half of `tile`'s registers, with the same operations in the
/// same order, so a row gets the same result alone as in a batch.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn single<const F: u8>(row: *const u8, acts: &Acts) -> f32 {
    let mut acc = [_mm256_setzero_ps(); SUMS];
    let mut offs = [0f32; SUMS];
    for wb in 0..acts.blocks / subs(F) {
        let blk = row.add(wb * block_bytes(F));
        let sc = unsigned_scales::<F>(blk);
        for j in 0..subs(F) {
            let q = unsigned_quants::<F>(blk, j);
            let ab = wb * subs(F) + j;
            let at = acts.at(ab, 0);
            let x = _mm256_loadu_si256(acts.qs.as_ptr().add(at * QK) as *const __m256i);
            let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, x);
            let s = _mm256_mul_ps(lane_scales::<F>(&sc, j), _mm256_set1_ps(acts.d[at]));
            let (acc, offs) = (&mut acc[ab % SUMS], &mut offs[ab % SUMS]);
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, *acc);
            *offs = sc.m[2 * j + 1].mul_add(acts.s[at], *offs);
            if F == Q6K {
                let dm = sc.m[2 * j] - sc.m[2 * j + 1];
                *offs = dm.mul_add(acts.s_lo[at], *offs);
            }
        }
    }
    (offs[0] + offs[1]) + hsum(_mm256_add_ps(acc[0], acc[1]))
}
