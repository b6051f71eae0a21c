//! The AMX kernel: one `tdpbsud` multiplies a block of up to 16 activation rows with a block
//! of 16 weight rows (16 × 16 dot products of 32 bytes), where AVX-512 VNNI needs 8
//! `vpdpbusd` and their unpacking per weight row.
//!
//! Tiles (Intel SDM vol. 1 ch. 18): A = activations, m rows of 32 signed bytes straight from
//! `acts` (its block-major layout is a tile already); B = 16 weight rows in VNNI order,
//! unpacked from the `pack` layout into a 512-byte buffer (Q8_0's is loaded as stored);
//! C = m × 16 int32, stored and scaled with AVX-512 into accumulators whose 16 lanes are the
//! weight rows. Every output is summed block by block, in order, as
//! acc = acc + c·(d_w·d_x), then acc = acc + m_w·s_x: the same operations for a row whatever
//! m is, so a row gets the same result alone as in a batch.
//!
//! The Rust AMX intrinsics are unstable, so the tile instructions are inline assembly. Linux
//! lends the tile registers only to a process that asks (`arch_prctl(ARCH_REQ_XCOMP_PERM)`,
//! kernel documentation `arch/x86/xstate.rst`), which `available` does once.
use super::acts::Acts;
use super::avx2::{prefetch, zero_point};
use super::formats::{subs, Q4K, Q4_1, Q5_0, Q5_1, Q6K, Q8_0, QK};
use super::pack::{self, Packed, GROUP};
use super::Out;
use std::arch::asm;
use std::arch::x86_64::*;
use std::ops::Range;
use std::sync::OnceLock;

/// Activation rows per tile.
const TILE: usize = 16;

/// Whether this CPU has AMX-INT8 and the kernel lets this process use it.
pub fn available() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        // CPUID leaf 7, sub-leaf 0, EDX bits 24 (AMX-TILE) and 25 (AMX-INT8).
        // Leaf 7 exists on every CPU with AVX2, checked first.
        let cpu =
            is_x86_feature_detected!("avx2") && __cpuid_count(7, 0).edx & (3 << 24) == 3 << 24;
        // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA (arch/x86/include/uapi/asm/prctl.h).
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain syscall with integer arguments.
        cpu && unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        } == 0
    })
}

/// The tile configuration (the 64-byte `LDTILECFG` operand, palette 1): two sets of A
/// (m × kb bytes), B (kb/4 × 64) and C (m × 64), tmm0–2 and tmm3–5.
#[repr(C, align(64))]
struct Config {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl Config {
    /// m activation rows, steps of `kb` values (32, or 16 for Q6_K).
    fn new(m: usize, kb: usize) -> Config {
        let (m, a, b) = (m as u8, kb as u16, (kb / 4) as u8);
        let tiles = [(m, a), (b, 64), (m, 64), (m, a), (b, 64), (m, 64)];
        let mut c = Config {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for (i, (rows, colsb)) in tiles.into_iter().enumerate() {
            c.rows[i] = rows;
            c.colsb[i] = colsb;
        }
        c
    }
}

#[repr(C, align(64))]
struct Buf<T>(T);

/// Weight rows `rows` of `w` (a multiple of 16 from the start, the end a multiple of 16 or
/// n) against every activation row, into `out`.
///
/// # Safety
/// `available()` must be true, AVX-512 F/BW/DQ/VL/VNNI and F16C present; `w` matches `acts`.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn rows<const F: u8>(w: &Packed, rows: Range<usize>, acts: &Acts, out: Out) {
    let mut unpacked: Vec<Buf<[u8; 512]>> = Vec::new();
    let mut c = [Buf([[0i32; 16]; TILE]), Buf([[0i32; 16]; TILE])];
    let mut configured = 0;
    for g in rows.start / GROUP..rows.end.div_ceil(GROUP) {
        let group = w.group(g);
        unpacked.clear();
        for r0 in (0..acts.rows).step_by(TILE) {
            let m = TILE.min(acts.rows - r0);
            // The row count is a constant of each `vnni`, so its loops over rows unroll.
            let vnni = match m {
                m if m > VNNI_MAX => None,
                1 => Some(vnni::<F, 1> as Vnni),
                2 => Some(vnni::<F, 2> as Vnni),
                3 => Some(vnni::<F, 3> as Vnni),
                4 => Some(vnni::<F, 4> as Vnni),
                5 => Some(vnni::<F, 5> as Vnni),
                6 => Some(vnni::<F, 6> as Vnni),
                7 => Some(vnni::<F, 7> as Vnni),
                8 => Some(vnni::<F, 8> as Vnni),
                _ => None,
            };
            let acc = if let Some(vnni) = vnni {
                vnni(w, group, acts, r0)
            } else {
                if unpacked.is_empty() && F != Q8_0 {
                    // Every sub-block of the group, once for all its tiles of rows.
                    unpacked.resize_with(acts.blocks, || Buf([0; 512]));
                    for (sb, t) in unpacked.iter_mut().enumerate() {
                        let unit = group.add(sb / subs(F) * pack::unit_bytes(F));
                        unpack::<F>(unit, sb % subs(F), t.0.as_mut_ptr());
                    }
                }
                if m != configured {
                    let cfg = Config::new(m, if F == Q6K { 16 } else { 32 });
                    asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly));
                    configured = m;
                }
                tiles::<F>(group, &unpacked, acts, r0, m, &mut c)
            };
            let cols = GROUP.min(w.n - g * GROUP);
            for (r, acc) in acc.iter().enumerate().take(m) {
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
    }
    if configured != 0 {
        // Back to the initial tile state, which the kernel need not save on a context switch.
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// One step's tile work: A (activations at x, rows 32 bytes apart) times B (the weight tile at
/// b) into C, stored at c; on tile set 0 (tmm0–2) or 1 (tmm3–5).
macro_rules! step {
    ($op:literal, $a:literal, $b:literal, $c:literal, $x:expr, $w:expr, $out:expr) => {
        asm!(
            concat!("tileloadd ", $a, ", [{x} + {s32}*1]"),
            concat!("tileloadd ", $b, ", [{b} + {s64}*1]"),
            concat!("tilezero ", $c),
            concat!($op, " ", $c, ", ", $a, ", ", $b),
            concat!("tilestored [{c} + {s64}*1], ", $c),
            x = in(reg) $x,
            b = in(reg) $w,
            c = in(reg) $out,
            s32 = in(reg) 32usize,
            s64 = in(reg) 64usize,
            options(nostack),
        )
    };
}

/// Rows r0..r0+m (more than `VNNI_MAX`) of a group with AMX. A step is a sub-block (Q6_K:
/// half of one, 16 values with their own scale); consecutive steps use the two tile sets
/// and C buffers in turn, and a step's tile work is issued before the previous step's
/// scaling, so the two overlap instead of waiting on each other's tiles.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn tiles<const F: u8>(
    group: *const u8,
    unpacked: &[Buf<[u8; 512]>],
    acts: &Acts,
    r0: usize,
    m: usize,
    c: &mut [Buf<[[i32; 16]; TILE]>; 2],
) -> [__m512; TILE] {
    let halves = if F == Q6K { 2 } else { 1 };
    let steps = acts.blocks * halves;
    let issue = |step: usize, c: *mut [i32; 16]| {
        let (sb, h) = (step / halves, step % halves);
        let x = acts.qs.as_ptr().add(acts.at(sb, r0) * QK + 16 * h);
        let b = if F == Q8_0 {
            group.add(sb * pack::unit_bytes(F) + pack::q(F))
        } else {
            unpacked[sb].0.as_ptr().add(256 * h)
        };
        match (F == Q8_0, step % 2) {
            (true, 0) => step!("tdpbssd", "tmm0", "tmm1", "tmm2", x, b, c),
            (true, _) => step!("tdpbssd", "tmm3", "tmm4", "tmm5", x, b, c),
            (false, 0) => step!("tdpbsud", "tmm0", "tmm1", "tmm2", x, b, c),
            (false, _) => step!("tdpbsud", "tmm3", "tmm4", "tmm5", x, b, c),
        }
    };
    let mut acc = [_mm512_setzero_ps(); TILE];
    issue(0, c[0].0.as_mut_ptr());
    for step in 0..steps {
        if step + 1 < steps {
            issue(step + 1, c[(step + 1) % 2].0.as_mut_ptr());
        }
        let (sb, h) = (step / halves, step % halves);
        let (u, j) = (sb / subs(F), sb % subs(F));
        let unit = group.add(u * pack::unit_bytes(F));
        let at = acts.at(sb, r0);
        let (d, s) = (acts.d.as_ptr().add(at), acts.s.as_ptr().add(at));
        let dots = &c[step % 2].0;
        let (dw, mw) = if F == Q6K {
            q6k_scales(unit, 2 * j + h)
        } else {
            scales::<F>(unit, j)
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            if r < m {
                let dot = _mm512_cvtepi32_ps(_mm512_load_si512(dots[r].as_ptr().cast()));
                let da = _mm512_set1_ps(*d.add(r));
                *acc = _mm512_fmadd_ps(dot, _mm512_mul_ps(dw, da), *acc);
            }
        }
        if F == Q6K && h == 1 {
            let dm = _mm512_sub_ps(q6k_scales(unit, 2 * j).1, mw);
            let s_lo = acts.s_lo.as_ptr().add(at);
            for (r, acc) in acc.iter_mut().enumerate() {
                if r < m {
                    *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(*s.add(r)), *acc);
                    *acc = _mm512_fmadd_ps(dm, _mm512_set1_ps(*s_lo.add(r)), *acc);
                }
            }
        } else if F != Q6K && F != Q8_0 {
            for (r, acc) in acc.iter_mut().enumerate() {
                if r < m {
                    *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(*s.add(r)), *acc);
                }
            }
        }
    }
    acc
}

/// Tiles of more activation rows than this go to AMX, smaller ones to `vnni`: both make the
/// same int32 dot products and scale them alike. A tile step costs about as much at 1 row as
/// at 16 (its store and the read-back of C dominate): against `vnni`, AMX was 1.3× faster
/// at 16 rows (128-row Q5_0 2048×640 product, 2 threads) and slower at 8.
const VNNI_MAX: usize = 8;

type Vnni = unsafe fn(&Packed, *const u8, &Acts, usize) -> [__m512; TILE];

/// Rows r0..r0+M (M ≤ `VNNI_MAX`) of a group with `vpdpbusd`: in VNNI order, 64 bytes of the
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
) -> [__m512; TILE] {
    let mut acc = [_mm512_setzero_ps(); TILE];
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
            let mut dot = [_mm512_setzero_si512(); M];
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
                let mut dot = dot[r];
                if F == Q8_0 {
                    // The weights were made unsigned by +128: take 128·Σx back off.
                    let sx = 128 * *acts.qsum.as_ptr().add(at + r);
                    dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(sx));
                }
                let da = _mm512_set1_ps(*d.add(r));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, da), acc[r]);
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
unsafe fn scales<const F: u8>(unit: *const u8, j: usize) -> (__m512, __m512) {
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
unsafe fn q6k_scales(unit: *const u8, h: usize) -> (__m512, __m512) {
    let d = _mm512_cvtph_ps(_mm256_loadu_si256(unit.add(pack::D) as *const __m256i));
    let sc = _mm_loadu_si128(unit.add(pack::SC6 + 16 * h) as *const __m128i);
    let dw = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc)));
    (dw, _mm512_mul_ps(_mm512_set1_ps(-32.0), dw))
}

/// Unpacks sub-block `j` of a unit into the 512-byte weight tile at `tile`.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn unpack<const F: u8>(unit: *const u8, j: usize, tile: *mut u8) {
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
