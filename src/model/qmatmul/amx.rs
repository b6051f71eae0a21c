//! The AMX kernel: one `tdpbsud` multiplies a block of up to 16 activation rows with a block
//! of 16 weight rows (16 × 16 dot products of 32 bytes), where the VNNI kernel (`vnni`) needs
//! 8 `vpdpbusd` per activation row. Products of up to 8 rows go to that kernel.
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
use super::formats::{subs, Q6K, Q8_0, QK};
use super::pack::{self, Packed, GROUP};
use super::vnni::{self, q6k_scales, scales, unpack, Buf};
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
            // Up to 8 rows go to `vnni`: both make the same int32 dot products and scale them
            // alike. A tile step costs about as much at 1 row as at 16 (its store and the
            // read-back of C dominate): against `vnni`, AMX was 1.3× faster at 16 rows
            // (128-row Q5_0 2048×640 product, 2 threads) and slower at 8.
            if m <= vnni::ROWS {
                vnni::store(w, g, r0, &vnni::group::<F>(w, g, acts, r0, m)[..m], out);
                continue;
            }
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
            vnni::store(
                w,
                g,
                r0,
                &tiles::<F>(group, &unpacked, acts, r0, m, &mut c)[..m],
                out,
            );
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

/// Rows r0..r0+m (more than `vnni::ROWS`) of a group with AMX. A step is a sub-block (Q6_K:
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
