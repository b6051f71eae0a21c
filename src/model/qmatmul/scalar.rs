//! The scalar path: plain integer dot products on the reference decoding of `formats`. It is
//! the reference the SIMD paths are tested against, and the fallback on other CPUs.
use super::acts::Acts;
use super::formats::{block_bytes, decode, subs, QK};
use super::Out;
use std::ops::Range;

/// One weight row against every activation row: out[r] = Σ_blocks dot(w_b, x_{r,b}).
pub fn row_dot(f: u8, row: &[u8], acts: &Acts, out: &mut [f32]) {
    out.fill(0.0);
    let subs = subs(f);
    for (wb, blk) in row.chunks_exact(block_bytes(f)).enumerate() {
        for j in 0..subs {
            let w = decode(f, blk, j);
            for (r, o) in out.iter_mut().enumerate() {
                let at = acts.at(wb * subs + j, r);
                let x = &acts.qs[at * QK..(at + 1) * QK];
                let half = |h: usize| -> i32 {
                    let range = h * QK / 2..(h + 1) * QK / 2;
                    w.q[range.clone()]
                        .iter()
                        .zip(&x[range])
                        .map(|(&q, &x)| q * x as i32)
                        .sum()
                };
                let (lo, hi) = (half(0) as f32, half(1) as f32);
                *o += acts.d[at] * (w.scale[0] * lo + w.scale[1] * hi) + w.min * acts.s[at];
            }
        }
    }
}

/// Weight rows `rows` of `w` against every activation row, into `out`.
pub fn rows(f: u8, w: &[u8], rows: Range<usize>, acts: &Acts, out: Out) {
    let row_bytes = acts.blocks / subs(f) * block_bytes(f);
    let mut dst = vec![0f32; acts.rows];
    for j in rows {
        row_dot(f, &w[j * row_bytes..(j + 1) * row_bytes], acts, &mut dst);
        for (r, &v) in dst.iter().enumerate() {
            // SAFETY: `Out` spans rows × n and this task owns column j.
            unsafe { out.write(r, j, v) };
        }
    }
}
