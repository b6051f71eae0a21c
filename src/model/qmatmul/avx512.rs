//! The AVX-512 VNNI kernel: a 512-bit register holds the same 32 unpacked weight bytes twice
//! and the activations of two rows (adjacent in the block-major layout), and one `vpdpbusd`
//! makes the 4-byte dot products of both rows, where AVX2 needs `maddubs` + `madd` per row.
//! Q8_0 is made unsigned by adding 128 (offset −128·d): `vpdpbusd` sums into 32 bits, so
//! unlike `maddubs` it cannot overflow on 255·127.
use super::acts::Acts;
use super::avx2::{hsum, lane_scales, prefetch, quants, scales, walk, zero_point, Scales, SUMS};
use super::formats::{block_bytes, subs, Q4_0, Q4_1, Q5_0, Q5_1, Q6K, Q8_0, QK};
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
            let v = if subs(F) == 1 {
                single_pairs::<F>(row, acts)
            } else {
                single::<F>(row, acts)
            };
            out.write(0, j, v);
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

/// The zero point z of a format whose value is d·(q + z) once its quants are made unsigned:
/// `zero_point`'s, and −128 for Q8_0, which `unsigned_quants` shifts by +128.
const fn unsigned_zero(f: u8) -> f32 {
    if f == Q8_0 {
        -128.0
    } else {
        zero_point(f)
    }
}

/// The block's scales; for Q8_0 with the offset −128·d that `unsigned_quants` calls for.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unsigned_scales<const F: u8>(blk: *const u8) -> Scales {
    let mut sc = scales::<F>(blk);
    if F == Q8_0 {
        sc.m = [unsigned_zero(F) * sc.d[0]; 16];
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
    let mut acc = [[_mm512_setzero_ps(); TILE / 2]; SUMS];
    let mut offs = [_mm512_setzero_ps(); SUMS];
    let (qs, d8) = (acts.qs.as_ptr(), acts.d8.as_ptr());
    walk!(
        F,
        row,
        acts.blocks,
        unsigned_scales,
        |sum, blk, sc, j, ab| {
            let q = unsigned_quants::<F>(blk, j);
            let at = acts.at(ab, r0);
            let w = _mm512_broadcast_i64x4(q);
            let wsc = _mm256_castps_pd(lane_scales::<F>(sc, j));
            let wsc = _mm512_castpd_ps(_mm512_broadcast_f64x4(wsc));
            let (acc, offs) = (&mut acc[sum], &mut offs[sum]);
            for (p, acc) in acc.iter_mut().enumerate() {
                if p < pairs {
                    let x = _mm512_loadu_si512(qs.add((at + 2 * p) * QK) as *const __m512i);
                    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
                    let s = _mm512_mul_ps(wsc, _mm512_loadu_ps(d8.add((at + 2 * p) * 8)));
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
    );
    let mut res = [0f32; TILE];
    _mm512_storeu_ps(res.as_mut_ptr(), _mm512_add_ps(offs[0], offs[1]));
    for p in 0..pairs {
        let sum = _mm512_add_ps(acc[0][p], acc[1][p]);
        res[2 * p] += hsum(_mm512_castps512_ps256(sum));
        res[2 * p + 1] += hsum(_mm512_extractf32x8_ps(sum, 1));
    }
    res
}

/// One weight row against a lone activation row (decoding one sequence); `rows` calls it for
/// the K-quants, and `single_pairs` for the formats of one sub-block a block. Sub-blocks go
/// in pairs through one 512-bit `vpdpbusd`: the even one in the low half, the odd one in the
/// high half, which are `tile`'s two sums for a row, with the same operations in the same
/// order, so a row gets the same result alone as in a batch.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn single<const F: u8>(row: *const u8, acts: &Acts) -> f32 {
    let mut acc = _mm512_setzero_ps();
    let mut offs = [0f32; SUMS];
    // The even sub-block's quants, activations and scales, until its odd partner comes.
    let mut even = (
        _mm256_setzero_si256(),
        _mm256_setzero_si256(),
        _mm256_setzero_ps(),
    );
    walk!(
        F,
        row,
        acts.blocks,
        unsigned_scales,
        |sum, blk, sc, j, ab| {
            let q = unsigned_quants::<F>(blk, j);
            let at = acts.at(ab, 0);
            let x = _mm256_loadu_si256(acts.qs.as_ptr().add(at * QK) as *const __m256i);
            let s = _mm256_mul_ps(lane_scales::<F>(sc, j), _mm256_set1_ps(acts.d[at]));
            offs[sum] = sc.m[2 * j + 1].mul_add(acts.s[at], offs[sum]);
            if F == Q6K {
                let dm = sc.m[2 * j] - sc.m[2 * j + 1];
                offs[sum] = dm.mul_add(acts.s_lo[at], offs[sum]);
            }
            if sum == 0 {
                even = (q, x, s);
            } else {
                let q = _mm512_inserti64x4(_mm512_castsi256_si512(even.0), q, 1);
                let x = _mm512_inserti64x4(_mm512_castsi256_si512(even.1), x, 1);
                let s = _mm512_insertf32x8(_mm512_castps256_ps512(even.2), s, 1);
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, x);
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc);
            }
        }
    );
    let (mut lo, hi) = (_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
    if acts.blocks % 2 == 1 {
        // The last sub-block had no odd partner.
        let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), even.0, even.1);
        lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), even.2, lo);
    }
    (offs[0] + offs[1]) + hsum(_mm256_add_ps(lo, hi))
}

/// `single` for the formats with one sub-block per block (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), two
/// blocks at a time. Their scales are converted together and their quants unpacked into one
/// register with one cross-lane shuffle: unpacking block by block took about seven shuffles a
/// block, and the shuffle port, not memory, bounded the kernel at B = 1. The sums are
/// `single`'s (even block: low half and lane 0 of `offs`, odd block: high half and lane 2),
/// with the same operations in the same order.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn single_pairs<const F: u8>(row: *const u8, acts: &Acts) -> f32 {
    let bytes = block_bytes(F);
    let (qs, d, s) = (acts.qs.as_ptr(), acts.d.as_ptr(), acts.s.as_ptr());
    // Lanes 0 and 2 of a 128-bit vector, each spread over one 256-bit half.
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
    let mut acc = _mm512_setzero_ps();
    let mut offs = _mm_setzero_ps();
    let mut ab = 0;
    while ab + 1 < acts.blocks {
        let (b0, b1) = (row.add(ab * bytes), row.add((ab + 1) * bytes));
        prefetch(b0);
        // With one row, the stride is 2: the odd block's activations are at `at` + 2, and a
        // 4-lane load from `at` reads [even, padding 0, odd, padding 0].
        let at = acts.at(ab, 0);
        let (dw, mw) = pair_scales::<F>(b0, b1);
        offs = _mm_fmadd_ps(mw, _mm_loadu_ps(s.add(at)), offs);
        let sc = _mm_mul_ps(dw, _mm_loadu_ps(d.add(at)));
        let sc = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(sc));
        let x = _mm256_loadu_si256(qs.add(at * QK) as *const __m256i);
        let x1 = _mm256_loadu_si256(qs.add((at + 2) * QK) as *const __m256i);
        let x = _mm512_inserti64x4(_mm512_castsi256_si512(x), x1, 1);
        let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), pair_quants::<F>(b0, b1), x);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc);
        ab += 2;
    }
    let mut lo = _mm512_castps512_ps256(acc);
    let mut offs: [f32; 4] = std::mem::transmute(offs);
    if ab < acts.blocks {
        // The last block had no odd partner: `single`'s step for it.
        let blk = row.add(ab * bytes);
        let sc = unsigned_scales::<F>(blk);
        let at = acts.at(ab, 0);
        let x = _mm256_loadu_si256(qs.add(at * QK) as *const __m256i);
        let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), unsigned_quants::<F>(blk, 0), x);
        let s = _mm256_mul_ps(lane_scales::<F>(&sc, 0), _mm256_set1_ps(acts.d[at]));
        lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, lo);
        offs[0] = sc.m[1].mul_add(acts.s[at], offs[0]);
    }
    (offs[0] + offs[2]) + hsum(_mm256_add_ps(lo, _mm512_extractf32x8_ps(acc, 1)))
}

/// Scales d and offsets m of two blocks, in lanes 0 and 2 (others are junk or 0), equal to
/// `unsigned_scales`'s.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn pair_scales<const F: u8>(b0: *const u8, b1: *const u8) -> (__m128, __m128) {
    if F == Q4_1 || F == Q5_1 {
        // f16 d, m at the start of each block: [d0, m0, d1, m1].
        let h = _mm_cvtsi32_si128((b0 as *const i32).read_unaligned());
        let h = _mm_insert_epi32(h, (b1 as *const i32).read_unaligned(), 1);
        let dm = _mm_cvtph_ps(h);
        (dm, _mm_movehdup_ps(dm))
    } else {
        // f16 d alone: [d0, 0, d1, 0]; the offset is the zero point times d.
        let h = _mm_cvtsi32_si128((b0 as *const u16).read_unaligned() as i32);
        let h = _mm_insert_epi16(h, (b1 as *const u16).read_unaligned() as i32, 2);
        let d = _mm_cvtph_ps(h);
        (d, _mm_mul_ps(_mm_set1_ps(unsigned_zero(F)), d))
    }
}

/// The 32 unsigned quants of block b0, then those of b1, as `unsigned_quants` gives them.
#[target_feature(enable = "avx512f,avx512bw,avx2")]
#[inline]
unsafe fn pair_quants<const F: u8>(b0: *const u8, b1: *const u8) -> __m512i {
    let load = |p: *const u8| _mm_loadu_si128(p as *const __m128i);
    // [raw0, raw0, raw1, raw1] >> [0, 4, 0, 4] & 0x0F: low nibbles, then high, per block.
    let nibbles = |at: usize| {
        let raw = _mm256_inserti128_si256(
            _mm256_castsi128_si256(load(b0.add(at))),
            load(b1.add(at)),
            1,
        );
        let both = _mm512_permutexvar_epi64(
            _mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3),
            _mm512_castsi256_si512(raw),
        );
        let shifted = _mm512_srlv_epi64(both, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
        _mm512_and_si512(shifted, _mm512_set1_epi8(0x0F))
    };
    // Bit i of the two qh words is byte i's fifth bit.
    let fifth = |q: __m512i, at: usize| {
        let qh0 = (b0.add(at) as *const u32).read_unaligned() as u64;
        let qh1 = (b1.add(at) as *const u32).read_unaligned() as u64;
        _mm512_mask_add_epi8(q, qh0 | qh1 << 32, q, _mm512_set1_epi8(0x10))
    };
    match F {
        Q4_0 => nibbles(2),
        Q4_1 => nibbles(4),
        Q5_0 => fifth(nibbles(6), 2),
        Q5_1 => fifth(nibbles(8), 4),
        _ => {
            let q0 = _mm256_loadu_si256(b0.add(2) as *const __m256i);
            let q1 = _mm256_loadu_si256(b1.add(2) as *const __m256i);
            let q = _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1);
            _mm512_xor_si512(q, _mm512_set1_epi8(-128))
        }
    }
}
