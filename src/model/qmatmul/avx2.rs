//! The AVX2 + FMA kernel, and the 256-bit unpacking of weight sub-blocks that the AVX-512
//! kernel shares.
//!
//! A sub-block is unpacked to 32 unsigned bytes q with, per 16 values, a scale and an offset:
//! value = d·q + m. Signed formats fold their zero point into the offset (Q4_0: m = −8·d,
//! llama.cpp's `ggml_vec_dot_q4_0_q8_0` subtracts 8 from the nibbles instead), so one
//! unsigned×signed byte product (`maddubs`, `dpbusd`) serves every format, and the offsets of
//! a whole tile of rows cost one FMA against the rows' activation sums. Q8_0 stays signed
//! here: 255·127·2 would overflow `maddubs`'s 16-bit sums, so its signs move onto x instead.
use super::acts::Acts;
use super::formats::{block_bytes, scale_min_k4, subs, Q4K, Q4_0, Q4_1, Q5_0, Q5_1, Q6K, Q8_0, QK};
use super::Out;
use std::arch::x86_64::*;
use std::ops::Range;

/// Activation rows handled per pass over a weight row (the accumulators stay in registers).
const TILE: usize = 4;

/// Sums per row: even and odd activation blocks are summed apart and added at the end, so a
/// single row does not wait on the latency of each FMA. Every kernel sums the same way, so a
/// row gets the same result whatever else is in the batch (the forward tests check this).
const SUMS: usize = 2;

/// Activation rows from which a weight row is unpacked once for all tiles rather than in
/// each: reading the unpacked sub-blocks back costs loads that the unpacking in registers
/// does not, so it pays only once enough tiles share it: measured faster for prefill and
/// 16-row decode steps, slower for 8-row ones (README, "Performance"). Q8_0 is never
/// unpacked: its unpacking is one load, cheaper than reading an unpacked sub-block back.
const UNPACK_FROM: usize = 16;

/// Scales and offsets of one weight block, per 16 values: value = d[h]·q + m[h].
struct Scales {
    pub d: [f32; 16],
    pub m: [f32; 16],
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn f16(p: *const u8) -> f32 {
    let bits = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// The zero point z of a format with no stored offset, value = d·(q + z): −8 for Q4_0's
/// nibbles, −16 for Q5_0's five bits (ggml's `dequantize_row_q4_0`/`_q5_0`), 0 for Q8_0's
/// signed bytes.
pub const fn zero_point(f: u8) -> f32 {
    match f {
        Q4_0 => -8.0,
        Q5_0 => -16.0,
        _ => 0.0,
    }
}

/// The scales and offsets of the block at `blk`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn scales<const F: u8>(blk: *const u8) -> Scales {
    let mut s = Scales {
        d: [0.0; 16],
        m: [0.0; 16],
    };
    match F {
        Q4K => {
            let (d, dmin) = (f16(blk), f16(blk.add(2)));
            let packed = std::slice::from_raw_parts(blk.add(4), 12);
            for j in 0..8 {
                let (sc, mn) = scale_min_k4(j, packed);
                s.d[2 * j] = d * sc as f32;
                s.d[2 * j + 1] = s.d[2 * j];
                s.m[2 * j] = -dmin * mn as f32;
                s.m[2 * j + 1] = s.m[2 * j];
            }
        }
        Q6K => {
            let d = f16(blk.add(208));
            for h in 0..16 {
                s.d[h] = d * *blk.add(192 + h) as i8 as f32;
                s.m[h] = -32.0 * s.d[h];
            }
        }
        _ => {
            let d = f16(blk);
            let m = match F {
                Q4_1 | Q5_1 => f16(blk.add(2)),
                _ => zero_point(F) * d,
            };
            s.d = [d; 16];
            s.m = [m; 16];
        }
    }
    s
}

/// The 32 nibbles of 16 bytes: low nibbles first, then high ones.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let raw = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// 0x10 in byte i where bit i of the u32 at `p` is set: the fifth bits of Q5_0/Q5_1.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn fifth_bits(p: *const u8) -> __m256i {
    let qh = (p as *const u32).read_unaligned();
    // Byte i takes byte i/8 of qh (shuffles stay within 128-bit lanes, each holds all 4).
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(qh as i32),
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Bytes shifted right by `by` bits, keeping `mask` (shifts of 16-bit lanes spill across bytes).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn shr_mask(v: __m256i, by: i32, mask: i8) -> __m256i {
    let v = _mm256_srl_epi16(v, _mm_cvtsi32_si128(by));
    _mm256_and_si256(v, _mm256_set1_epi8(mask))
}

/// The 32 quants of sub-block `j` of the block at `blk` (unsigned, Q8_0 signed).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn quants<const F: u8>(blk: *const u8, j: usize) -> __m256i {
    match F {
        Q4_0 => nibbles(blk.add(2)),
        Q4_1 => nibbles(blk.add(4)),
        Q5_0 => _mm256_or_si256(nibbles(blk.add(6)), fifth_bits(blk.add(2))),
        Q5_1 => _mm256_or_si256(nibbles(blk.add(8)), fifth_bits(blk.add(4))),
        Q8_0 => _mm256_loadu_si256(blk.add(2) as *const __m256i),
        Q4K => {
            let qs = _mm256_loadu_si256(blk.add(16 + 32 * (j / 2)) as *const __m256i);
            shr_mask(qs, 4 * (j % 2) as i32, 0x0F)
        }
        _ => {
            // Q6_K: sub-block j = 4·half + t takes the low (t < 2) or high nibbles of
            // ql[64·half + 32·(t % 2)..] and bits 2t, 2t+1 of qh[32·half..].
            let (half, t) = (j / 4, j % 4);
            let ql = _mm256_loadu_si256(blk.add(64 * half + 32 * (t % 2)) as *const __m256i);
            let qh = _mm256_loadu_si256(blk.add(128 + 32 * half) as *const __m256i);
            let lo = shr_mask(ql, 4 * (t / 2) as i32, 0x0F);
            let hi = _mm256_slli_epi16(shr_mask(qh, 2 * t as i32, 0x03), 4);
            _mm256_or_si256(lo, hi)
        }
    }
}

/// The per-lane weight scales of sub-block `j` for a 32-bit lane product of 4 bytes: lanes
/// 0..4 cover values 0..16, lanes 4..8 values 16..32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn lane_scales<const F: u8>(s: &Scales, j: usize) -> __m256 {
    if F == Q6K {
        _mm256_set_m128(_mm_set1_ps(s.d[2 * j + 1]), _mm_set1_ps(s.d[2 * j]))
    } else {
        _mm256_set1_ps(s.d[2 * j])
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Runs `body` for each sub-block of one weight row, in order, with `$blk` the block, `$sc`
/// its scales (from `$scales::<F>`), `$j` the sub-block in it and `$ab` the activation block.
/// `$sum` is which of the `SUMS` sums the sub-block goes to (`$ab` even: 0, odd: 1), a
/// constant in each copy of `body`, so per-sum accumulators are plain locals that stay in
/// registers. Indexed by `ab % 2` at run time they lived on the stack, and each FMA waited on
/// the store of the one before (the B = 1 kernel ran at about 8 cycles a block). A macro, not
/// a function taking a closure: the closure was not always inlined.
macro_rules! walk {
    ($f:ident, $row:expr, $blocks:expr, $scales:ident,
     |$sum:ident, $blk:ident, $sc:ident, $j:ident, $ab:ident| $body:block) => {{
        let (row, blocks, bytes) = ($row, $blocks, block_bytes($f));
        if subs($f) == 1 {
            let mut ab = 0;
            while ab + 1 < blocks {
                let (even, odd) = (row.add(ab * bytes), row.add((ab + 1) * bytes));
                prefetch(even);
                {
                    let ($sum, $blk, $sc, $j, $ab) = (0usize, even, &$scales::<$f>(even), 0, ab);
                    $body
                }
                {
                    let ($sum, $blk, $sc, $j, $ab) = (1usize, odd, &$scales::<$f>(odd), 0, ab + 1);
                    $body
                }
                ab += 2;
            }
            if ab < blocks {
                let last = row.add(ab * bytes);
                let ($sum, $blk, $sc, $j, $ab) = (0usize, last, &$scales::<$f>(last), 0, ab);
                $body
            }
        } else {
            // Sub-blocks per block are even (8), so a block's sub-blocks pair up within it.
            for wb in 0..blocks / subs($f) {
                let blk = row.add(wb * bytes);
                let sc = $scales::<$f>(blk);
                for j in (0..subs($f)).step_by(2) {
                    prefetch(blk.add(32 * j));
                    {
                        let ($sum, $blk, $sc, $j, $ab) = (0usize, blk, &sc, j, wb * subs($f) + j);
                        $body
                    }
                    {
                        let ab = wb * subs($f) + j + 1;
                        let ($sum, $blk, $sc, $j, $ab) = (1usize, blk, &sc, j + 1, ab);
                        $body
                    }
                }
            }
        }
    }};
}

/// How far ahead of the kernel weights are prefetched. A lone activation row makes the
/// kernel stream weights, and the hardware prefetcher alone left it waiting on them: with
/// this, the B = 1 product of a 49152×576 Q8_0 matrix (smollm2's output head) went from
/// 23 to 35–39 GB/s on 2 threads, gemma's 262144×640 one from 12 to 20–25 GB/s (out of
/// cache); 1024 and 4096 bytes measured between, 8192 no better.
const PREFETCH: usize = 2048;

/// Asks for the cache line `PREFETCH` bytes past `p`: past the end of the weights it is a
/// hint that does nothing, never a fault.
#[inline(always)]
pub fn prefetch(p: *const u8) {
    // SAFETY: prefetching any address is allowed (SSE, part of x86-64).
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8) }
}

/// Weight rows `rows` of `w` against every activation row, into `out`.
///
/// Each tile of [`TILE`] activation rows takes the weight row from its blocks, unpacking
/// them on the way. From [`UNPACK_FROM`] rows on, each weight row is instead unpacked once
/// ([`Unpacked`]) for all the tiles. Both ways run the same operations on the same values in
/// the same order, so a row's result does not depend on how many others share the product.
///
/// # Safety
/// AVX2, FMA and F16C must be present; `w` holds whole rows of `acts.blocks` blocks of 32.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows<const F: u8>(w: &[u8], rows: Range<usize>, acts: &Acts, out: Out) {
    let row_bytes = acts.blocks / subs(F) * block_bytes(F);
    let unpacks = acts.rows >= UNPACK_FROM && F != Q8_0;
    let mut unpacked = Vec::with_capacity(if unpacks { acts.blocks } else { 0 });
    for j in rows {
        let row = w[j * row_bytes..(j + 1) * row_bytes].as_ptr();
        if unpacks {
            unpack::<F>(row, acts.blocks, &mut unpacked);
        }
        for r0 in (0..acts.rows).step_by(TILE) {
            let n = TILE.min(acts.rows - r0);
            let res = if unpacks {
                tile_unpacked::<F>(&unpacked, acts, r0, n)
            } else {
                tile::<F>(row, acts, r0, n)
            };
            for (r, &v) in res[..n].iter().enumerate() {
                out.write(r0 + r, j, v);
            }
        }
    }
}

/// One sub-block of a weight row, unpacked: what [`tile`] derives from the block each time.
#[derive(Clone, Copy)]
struct Unpacked {
    q: __m256i,
    /// Per-lane weight scales ([`lane_scales`]).
    wsc: __m256,
    /// The offset of values 16..32, and (Q6_K) that of values 0..16 less it.
    m: f32,
    dm: f32,
}

impl Unpacked {
    /// Sub-block `j` of the block at `blk`, whose scales are `sc`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn of<const F: u8>(blk: *const u8, sc: &Scales, j: usize) -> Self {
        Unpacked {
            q: quants::<F>(blk, j),
            wsc: lane_scales::<F>(sc, j),
            m: sc.m[2 * j + 1],
            dm: if F == Q6K {
                sc.m[2 * j] - sc.m[2 * j + 1]
            } else {
                0.0
            },
        }
    }
}

/// Unpacks the weight row at `row` into `into`, one entry per sub-block, in order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unpack<const F: u8>(row: *const u8, blocks: usize, into: &mut Vec<Unpacked>) {
    into.clear();
    walk!(F, row, blocks, scales, |_sum, blk, sc, j, _ab| {
        into.push(Unpacked::of::<F>(blk, sc, j));
    });
}

/// The body [`tile`] and [`tile_unpacked`] share: sub-block `u`, activation block `ab`,
/// into the sums `acc` and `offs` of its parity. A macro so that each copy keeps its
/// accumulators in registers (see [`walk`]).
macro_rules! sub_block {
    ($f:ident, $u:expr, $ab:expr, $acts:expr, $r0:expr, $n:expr, $live:expr,
     $qs:expr, $d:expr, $acc:expr, $offs:expr) => {{
        let u: &Unpacked = $u;
        let at = $acts.at($ab, $r0);
        for (r, acc) in $acc.iter_mut().enumerate() {
            if r < $n {
                let x = _mm256_loadu_si256($qs.add((at + r) * QK) as *const __m256i);
                let s = _mm256_mul_ps(u.wsc, _mm256_broadcast_ss(&*$d.add(at + r)));
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot::<$f>(u.q, x)), s, *acc);
            }
        }
        if $f != Q8_0 {
            let s = _mm256_maskload_ps($acts.s.as_ptr().add(at), $live);
            *$offs = _mm256_fmadd_ps(_mm256_set1_ps(u.m), s, *$offs);
            if $f == Q6K {
                let lo = _mm256_maskload_ps($acts.s_lo.as_ptr().add(at), $live);
                *$offs = _mm256_fmadd_ps(_mm256_set1_ps(u.dm), lo, *$offs);
            }
        }
    }};
}

/// One weight row against activation rows r0..r0+n (n ≤ TILE).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile<const F: u8>(row: *const u8, acts: &Acts, r0: usize, n: usize) -> [f32; TILE] {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let live = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
    // Even and odd activation blocks go to separate sums (see `SUMS`).
    let mut acc = [[_mm256_setzero_ps(); TILE]; SUMS];
    let mut offs = [_mm256_setzero_ps(); SUMS];
    let (qs, d) = (acts.qs.as_ptr(), acts.d.as_ptr());
    walk!(F, row, acts.blocks, scales, |sum, blk, sc, j, ab| {
        let u = Unpacked::of::<F>(blk, sc, j);
        let (acc, offs) = (&mut acc[sum], &mut offs[sum]);
        sub_block!(F, &u, ab, acts, r0, n, live, qs, d, acc, offs);
    });
    finish(&acc, &offs)
}

/// [`tile`] over a weight row [`unpack`]ed beforehand.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile_unpacked<const F: u8>(
    row: &[Unpacked],
    acts: &Acts,
    r0: usize,
    n: usize,
) -> [f32; TILE] {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let live = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
    let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); TILE], [_mm256_setzero_ps(); TILE]);
    let (mut offs0, mut offs1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (qs, d) = (acts.qs.as_ptr(), acts.d.as_ptr());
    let mut ab = 0;
    while ab + 1 < row.len() {
        sub_block!(F, &row[ab], ab, acts, r0, n, live, qs, d, acc0, &mut offs0);
        sub_block!(
            F,
            &row[ab + 1],
            ab + 1,
            acts,
            r0,
            n,
            live,
            qs,
            d,
            acc1,
            &mut offs1
        );
        ab += 2;
    }
    if ab < row.len() {
        sub_block!(F, &row[ab], ab, acts, r0, n, live, qs, d, acc0, &mut offs0);
    }
    finish(&[acc0, acc1], &[offs0, offs1])
}

/// Each row's two sums and offsets added: the tile's results.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn finish(acc: &[[__m256; TILE]; SUMS], offs: &[__m256; SUMS]) -> [f32; TILE] {
    let mut lane = [0f32; 8];
    _mm256_storeu_ps(lane.as_mut_ptr(), _mm256_add_ps(offs[0], offs[1]));
    std::array::from_fn(|r| lane[r] + hsum(_mm256_add_ps(acc[0][r], acc[1][r])))
}

/// 32-bit lane sums of 4 byte products of weight quants `q` and activations `x`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot<const F: u8>(q: __m256i, x: __m256i) -> __m256i {
    let (q, x) = if F == Q8_0 {
        (_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q))
    } else {
        (q, x)
    };
    _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), _mm256_set1_epi16(1))
}
