//! Activations quantized to 8 bits in blocks of 32 (one f32 scale per block), as llama.cpp's
//! `quantize_row_q8_0`/`quantize_row_q8_1` do: d = max|x|/127, q = round(x/d).
//!
//! The layout is block-major: the rows of one block lie next to each other, so a kernel that
//! holds one unpacked weight block reads the activations of every row for it in one run, and
//! loads the per-row sums of a tile as one vector.
use super::formats::QK;
use crate::model::math::{round_to_int, simd_here};

/// Quantized activations of `rows` rows, `blocks` blocks of 32 each.
#[derive(Default)]
pub struct Acts {
    pub rows: usize,
    /// Rows per block in the arrays: `rows` rounded up to even, as the AVX-512 kernel reads
    /// rows in pairs (the padding rows are zero and never written out).
    pub stride: usize,
    pub blocks: usize,
    /// [block][stride][32], from a 64-byte boundary: the AVX-512 kernel loads row pairs as
    /// 64 bytes, and from a malloc'd (16-byte aligned) start every such load spanned two
    /// cache lines.
    pub qs: Lines,
    /// [block][stride]: the scale, x ≈ d·q.
    pub d: Vec<f32>,
    /// [block][stride]: d·Σq, for weight formats with an offset.
    pub s: Vec<f32>,
    /// [block][stride]: d·Σq over the first 16 values, for Q6_K's two offsets per block.
    pub s_lo: Vec<f32>,
    /// [block][stride]: Σq.
    pub qsum: Vec<i32>,
    /// [block][stride][8]: d eight times, so the AVX-512 kernel loads the scales of a row
    /// pair as one vector instead of shuffling two of `d` into place (the shuffle port is
    /// the busy one there). Only for more than one row.
    pub d8: Vec<f32>,
}

impl Acts {
    /// Quantizes `x`, `rows` rows of `blocks`·32 values, reusing the buffers.
    pub fn quantize(&mut self, x: &[f32], rows: usize, blocks: usize) {
        simd_here!(self.quantize_body(x, rows, blocks))
    }

    #[inline(always)]
    fn quantize_body(&mut self, x: &[f32], rows: usize, blocks: usize) {
        let stride = rows.next_multiple_of(2);
        self.rows = rows;
        self.stride = stride;
        self.blocks = blocks;
        self.qs.zeroed(blocks * stride * QK);
        for v in [&mut self.d, &mut self.s, &mut self.s_lo] {
            v.clear();
            v.resize(blocks * stride, 0.0);
        }
        self.qsum.clear();
        self.qsum.resize(blocks * stride, 0);
        let k = blocks * QK;
        for r in 0..rows {
            for (b, c) in x[r * k..(r + 1) * k].chunks_exact(QK).enumerate() {
                let at = b * stride + r;
                let c: &[f32; QK] = c.try_into().expect("a block of 32");
                let d = abs_max(c) / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                // Whole arrays, so the loops vectorize.
                let q: [i32; QK] = c.map(|v| round_to_int(v * id));
                let qs: &mut [i8; QK] = (&mut self.qs[at * QK..(at + 1) * QK]).try_into().unwrap();
                *qs = q.map(|q| q as i8);
                let lo: i32 = q[..QK / 2].iter().sum();
                let hi: i32 = q[QK / 2..].iter().sum();
                self.d[at] = d;
                self.s[at] = d * (lo + hi) as f32;
                self.s_lo[at] = d * lo as f32;
                self.qsum[at] = lo + hi;
            }
        }
        self.d8.clear();
        if rows > 1 {
            self.d8.extend(self.d.iter().flat_map(|&d| [d; 8]));
        }
    }

    /// Index of (block, row) in `d`, `s`, `s_lo`; times 32 in `qs`.
    pub fn at(&self, block: usize, row: usize) -> usize {
        block * self.stride + row
    }
}

/// Bytes in whole cache lines, viewed as a slice of `len` of them.
#[derive(Default)]
pub struct Lines {
    lines: Vec<Line>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([i8; 64]);

impl Lines {
    /// `len` zero bytes, reusing the allocation.
    pub fn zeroed(&mut self, len: usize) {
        self.lines.clear();
        self.lines.resize(len.div_ceil(64), Line([0; 64]));
        self.len = len;
    }
}

impl std::ops::Deref for Lines {
    type Target = [i8];
    fn deref(&self) -> &[i8] {
        // SAFETY: `lines` holds at least `len` initialized bytes, and a Line is plain bytes.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }
}

impl std::ops::DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [i8] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

/// max |x|, by halving: each level is a lane-wise compare and select, which vectorizes where
/// a running `f32::max` (a chain, with its NaN rule) did not.
#[inline(always)]
fn abs_max(x: &[f32; QK]) -> f32 {
    let mut m = x.map(f32::abs);
    let mut n = QK;
    while n > 1 {
        n /= 2;
        for j in 0..n {
            m[j] = if m[j + n] > m[j] { m[j + n] } else { m[j] };
        }
    }
    m[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against ggml's `quantize_row_q8_0`, written out: d = max|x|/127, q = round(x/d), ties
    /// to even here (`round_to_int`); the sums of each half of the block.
    #[test]
    fn blocks_quantize_as_q8_0_with_their_sums() {
        let (rows, blocks) = (3, 2);
        let mut x: Vec<f32> = (0..rows * blocks * QK)
            .map(|i| ((i * 37) % 101) as f32 * 0.173 - 8.0)
            .collect();
        x[5] = 0.0;
        x[QK..2 * QK].fill(0.0); // an all-zero block: d = 0, every q = 0
        let mut a = Acts::default();
        a.quantize(&x, rows, blocks);
        for r in 0..rows {
            for b in 0..blocks {
                let c = &x[(r * blocks + b) * QK..][..QK];
                let d = c.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                let want: Vec<i8> = c.iter().map(|v| (v * id).round_ties_even() as i8).collect();
                let at = a.at(b, r);
                assert_eq!(
                    &a.qs[at * QK..(at + 1) * QK],
                    &want[..],
                    "row {r} block {b}"
                );
                let lo: i32 = want[..QK / 2].iter().map(|&q| q as i32).sum();
                let hi: i32 = want[QK / 2..].iter().map(|&q| q as i32).sum();
                assert_eq!((a.d[at], a.qsum[at]), (d, lo + hi));
                assert_eq!((a.s[at], a.s_lo[at]), (d * (lo + hi) as f32, d * lo as f32));
            }
        }
    }
}
