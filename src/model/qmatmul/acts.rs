//! Activations quantized to 8 bits in blocks of 32 (one f32 scale per block), as llama.cpp's
//! `quantize_row_q8_0`/`quantize_row_q8_1` do: d = max|x|/127, q = round(x/d).
//!
//! The layout is block-major: the rows of one block lie next to each other, so a kernel that
//! holds one unpacked weight block reads the activations of every row for it in one run, and
//! loads the per-row sums of a tile as one vector.
use super::formats::QK;

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
                let qs = &mut self.qs[at * QK..(at + 1) * QK];
                let amax = c.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                let (mut lo, mut hi) = (0i32, 0i32);
                for (i, (q, v)) in qs.iter_mut().zip(c).enumerate() {
                    *q = round(v * id) as i8;
                    if i < QK / 2 {
                        lo += *q as i32;
                    } else {
                        hi += *q as i32;
                    }
                }
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

/// Rounds to nearest (ties to even) for |v| < 2^22 by adding and removing 1.5·2^23, which
/// pushes the fraction out of the mantissa: plain float adds that vectorize, unlike `round`,
/// a library call on x86-64 without SSE4.1.
fn round(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}
