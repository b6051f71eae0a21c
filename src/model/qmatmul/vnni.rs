//! The AVX-512 VNNI kernel on the `pack` layout. In VNNI order, 64 bytes of a weight tile
//! hold 4 values of each of 16 weight rows, so one `vpdpbusd` against 4 activation bytes
//! broadcast adds them to all 16 rows' dots: no shuffles and no horizontal sums, where a
//! kernel on GGUF's row-major blocks needs both for every weight row. The AVX-512 path runs
//! it for every product, 8 activation rows at a time; the AMX path for products of up to 8
//! rows, where a tile step costs more (`amx`).
//!
//! It replaced a kernel on GGUF's own blocks for AVX-512 CPUs without AMX. On this machine
//! with `CONCLAVE_SIMD=avx512`, `bench-speed --sizes 1,8 --max-tokens 128 --prompt-tokens
//! 128`, medians of alternating runs, seconds before → after: smollm2 N = 1 1.07 → 0.60,
//! N = 8 3.49 → 1.57; qwen2.5-coder-0.5b 4.07 → 2.56 and 9.13 → 3.88; gemma3-270m 2.17 →
//! 1.50 and 4.97 → 2.32. Prefill of 128 and 512 smollm2 tokens went from 430 and 280 to
//! 880 and 630 tokens/s (512 rows took candle's dequantize + f32 GEMM before).
use super::acts::Acts;
use super::avx2::{prefetch, zero_point};
use super::formats::{subs, Q4K, Q4_1, Q5_0, Q5_1, Q6K, Q8_0, QK};
use super::pack::{self, Packed, GROUP};
use super::Out;
use std::arch::x86_64::*;
use std::ops::Range;

/// Activation rows a pass over a group takes: each needs a vector of dots and one of sums.
pub const ROWS: usize = 8;

/// A value from a 64-byte boundary: a weight tile, or AMX's tile buffers, a line per row.
#[repr(C, align(64))]
pub struct Buf<T>(pub T);

/// Weight rows `rows` of `w` (a multiple of 16 from the start, the end a multiple of 16 or
/// n) against every activation row, into `out`.
///
/// # Safety
/// AVX-512 F/BW/DQ/VL/VNNI and F16C must be present; `w` matches `acts`.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn rows<const F: u8>(w: &Packed, rows: Range<usize>, acts: &Acts, out: Out) {
    for g in rows.start / GROUP..rows.end.div_ceil(GROUP) {
        for r0 in (0..acts.rows).step_by(ROWS) {
            let m = ROWS.min(acts.rows - r0);
            store(w, g, r0, &group::<F>(w, g, acts, r0, m)[..m], out);
        }
    }
}

/// Rows r0..r0 + m (m ≤ `ROWS`) of group g: one vector of 16 weight rows' sums per row.
///
/// # Safety
/// As for `rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub unsafe fn group<const F: u8>(
    w: &Packed,
    g: usize,
    acts: &Acts,
    r0: usize,
    m: usize,
) -> [__m512; ROWS] {
    // The row count is a constant of each `vnni`, so its loops over rows unroll.
    let vnni = match m {
        1 => vnni::<F, 1>,
        2 => vnni::<F, 2>,
        3 => vnni::<F, 3>,
        4 => vnni::<F, 4>,
        5 => vnni::<F, 5>,
        6 => vnni::<F, 6>,
        7 => vnni::<F, 7>,
        _ => vnni::<F, 8>,
    };
    vnni(w, w.group(g), acts, r0)
}

/// Writes rows r0.. of group g's sums (`acc`, one vector of 16 weight rows per row) into
/// `out`, leaving out the padding rows past n.
///
/// # Safety
/// AVX-512F must be present; the rows and the group lie in `out`.
#[target_feature(enable = "avx512f")]
#[inline]
pub unsafe fn store(w: &Packed, g: usize, r0: usize, acc: &[__m512], out: Out) {
    let cols = GROUP.min(w.n - g * GROUP);
    for (r, acc) in acc.iter().enumerate() {
        if cols == GROUP {
            _mm512_storeu_ps(out.at(r0 + r, g * GROUP), *acc);
            continue;
        }
        let mut v = [0f32; GROUP];
        _mm512_storeu_ps(v.as_mut_ptr(), *acc);
        for (i, &v) in v[..cols].iter().enumerate() {
            out.write(r0 + r, g * GROUP + i, v);
        }
    }
}

/// Rows r0..r0+M (M ≤ `ROWS`) of a group with `vpdpbusd`: in VNNI order, 64 bytes of the
/// weight tile hold 4 values of each of the 16 rows, so one `vpdpbusd` against 4 activation
/// bytes broadcast adds them to each row's dot, and 8 make the whole dot, the same int32 AMX
/// gives. The 8 steps go over all M rows in turn: M independent chains instead of each row's
/// chain of 8 dependent `vpdpbusd` (the int32 sums are exact in any order).
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn vnni<const F: u8, const M: usize>(
    w: &Packed,
    group: *const u8,
    acts: &Acts,
    r0: usize,
) -> [__m512; ROWS] {
    let mut acc = [_mm512_setzero_ps(); ROWS];
    let mut tile = Buf([_mm512_setzero_si512(); 8]);
    for u in 0..w.units() {
        let unit = group.add(u * pack::unit_bytes(F));
        // With up to 8 rows the weights stream, as in `avx2`'s kernel: at 8 rows of gemma's
        // 262144×640 Q8_0 head, 65 % of the time went to waiting on their loads.
        for line in (0..pack::unit_bytes(F)).step_by(64) {
            prefetch(unit.add(line));
        }
        for j in 0..subs(F) {
            let at = acts.at(u * subs(F) + j, r0);
            let x = acts.qs.as_ptr().add(at * QK) as *const i32;
            let (dw, mw) = scales::<F>(unit, j);
            let (d, s) = (acts.d.as_ptr().add(at), acts.s.as_ptr().add(at));
            let wt: [__m512i; 8] = if F == Q8_0 {
                let q = unit.add(pack::q(F)) as *const __m512i;
                std::array::from_fn(|g| {
                    _mm512_xor_si512(_mm512_loadu_si512(q.add(g)), _mm512_set1_epi8(-128))
                })
            } else {
                unpack::<F>(unit, j, tile.0.as_mut_ptr() as *mut u8);
                tile.0
            };
            // Q8_0's weights were made unsigned by +128: each row's sum starts at −128·Σx,
            // which takes that back off. A broadcast load, where a subtraction per row took
            // a shift, a broadcast and a subtract on the vector ports: smollm2's head
            // (49152×576 Q8_0, 8 rows, one thread) went from 1.48 to 1.34 ms (the fastest of
            // 20 timings each, in 10 runs taking turns).
            let mut dot: [__m512i; M] = std::array::from_fn(|r| {
                if F == Q8_0 {
                    _mm512_set1_epi32(*acts.unbias.as_ptr().add(at + r))
                } else {
                    _mm512_setzero_si512()
                }
            });
            if F == Q6K {
                // Each row's two halves apart: they have scales of their own.
                let mut hi = [_mm512_setzero_si512(); M];
                for g in 0..4 {
                    for r in 0..M {
                        let xr = x.add(8 * r);
                        dot[r] = _mm512_dpbusd_epi32(dot[r], wt[g], _mm512_set1_epi32(*xr.add(g)));
                        hi[r] = _mm512_dpbusd_epi32(
                            hi[r],
                            wt[4 + g],
                            _mm512_set1_epi32(*xr.add(4 + g)),
                        );
                    }
                }
                let (dw_hi, mw_hi) = q6k_scales(unit, 2 * j + 1);
                let s_lo = acts.s_lo.as_ptr().add(at);
                let dm = _mm512_sub_ps(mw, mw_hi);
                for r in 0..M {
                    let da = _mm512_set1_ps(*d.add(r));
                    let a = &mut acc[r];
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r]), _mm512_mul_ps(dw, da), *a);
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi[r]), _mm512_mul_ps(dw_hi, da), *a);
                    *a = _mm512_fmadd_ps(mw_hi, _mm512_set1_ps(*s.add(r)), *a);
                    *a = _mm512_fmadd_ps(dm, _mm512_set1_ps(*s_lo.add(r)), *a);
                }
                continue;
            }
            for (g, wt) in wt.iter().enumerate() {
                for (r, dot) in dot.iter_mut().enumerate() {
                    *dot = _mm512_dpbusd_epi32(*dot, *wt, _mm512_set1_epi32(*x.add(8 * r + g)));
                }
            }
            for r in 0..M {
                let da = _mm512_set1_ps(*d.add(r));
                let dot = _mm512_cvtepi32_ps(dot[r]);
                acc[r] = _mm512_fmadd_ps(dot, _mm512_mul_ps(dw, da), acc[r]);
                if F != Q8_0 {
                    acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*s.add(r)), acc[r]);
                }
            }
        }
    }
    acc
}

/// Scale d and offset m of each of the unit's 16 rows for sub-block `j` (value = d·q + m;
/// Q6_K: its first 16 values).
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
#[inline]
pub unsafe fn scales<const F: u8>(unit: *const u8, j: usize) -> (__m512, __m512) {
    let half = |at: usize| _mm512_cvtph_ps(_mm256_loadu_si256(unit.add(at) as *const __m256i));
    let bytes = |at: usize| {
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
            unit.add(at) as *const __m128i
        )))
    };
    match F {
        Q4_1 | Q5_1 => (half(pack::D), half(pack::M)),
        Q4K => {
            let dw = _mm512_mul_ps(half(pack::D), bytes(pack::SC + 16 * j));
            let mw = _mm512_mul_ps(half(pack::M), bytes(pack::MN + 16 * j));
            (dw, _mm512_sub_ps(_mm512_setzero_ps(), mw))
        }
        Q6K => q6k_scales(unit, 2 * j),
        _ => {
            let d = half(pack::D);
            (d, _mm512_mul_ps(_mm512_set1_ps(zero_point(F)), d))
        }
    }
}

/// Q6_K's scale and offset of 16-value half `h` for the unit's rows: d·sc and −32·d·sc.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
#[inline]
pub unsafe fn q6k_scales(unit: *const u8, h: usize) -> (__m512, __m512) {
    let d = _mm512_cvtph_ps(_mm256_loadu_si256(unit.add(pack::D) as *const __m256i));
    let sc = _mm_loadu_si128(unit.add(pack::SC6 + 16 * h) as *const __m128i);
    let dw = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc)));
    (dw, _mm512_mul_ps(_mm512_set1_ps(-32.0), dw))
}

/// Unpacks sub-block `j` of a unit into the 512-byte weight tile at `tile`.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
#[inline]
pub unsafe fn unpack<const F: u8>(unit: *const u8, j: usize, tile: *mut u8) {
    let q = unit.add(pack::q(F) + 256 * j);
    let low = _mm512_set1_epi8(0x0F);
    for c in 0..4 {
        let raw = _mm512_loadu_si512(q.add(64 * c) as *const __m512i);
        let mut lo = _mm512_and_si512(raw, low);
        let mut hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
        match F {
            Q5_0 | Q5_1 => {
                let qh = unit.add(pack::qh(F)) as *const u64;
                let five = _mm512_set1_epi8(0x10);
                lo = _mm512_mask_add_epi8(lo, qh.add(c).read_unaligned(), lo, five);
                hi = _mm512_mask_add_epi8(hi, qh.add(4 + c).read_unaligned(), hi, five);
            }
            Q6K => {
                // Tile byte t's top bits: bits 2·(t / 128) of qh byte t % 128.
                let qh = unit.add(pack::QH6 + 128 * j);
                let top = |t: usize| {
                    let b = _mm512_loadu_si512(qh.add(t % 128) as *const __m512i);
                    let b = _mm512_srl_epi16(b, _mm_cvtsi32_si128(2 * (t / 128) as i32));
                    _mm512_slli_epi16(_mm512_and_si512(b, _mm512_set1_epi8(3)), 4)
                };
                lo = _mm512_or_si512(lo, top(64 * c));
                hi = _mm512_or_si512(hi, top(256 + 64 * c));
            }
            _ => {}
        }
        _mm512_store_si512(tile.add(64 * c) as *mut __m512i, lo);
        _mm512_store_si512(tile.add(256 + 64 * c) as *mut __m512i, hi);
    }
}
