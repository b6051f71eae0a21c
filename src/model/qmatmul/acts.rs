//! Activations quantized to 8 bits in blocks of 32 (one f32 scale per block), as llama.cpp's
//! `quantize_row_q8_0`/`quantize_row_q8_1` do: d = max|x|/127, q = round(x/d).
//!
//! The layout is block-major: the rows of one block lie next to each other, so a kernel that
//! holds one unpacked weight block reads the activations of every row for it in one run, and
//! loads the per-row sums of a tile as one vector.
use super::formats::QK;
use crate::model::math::round_to_int;
use std::ops::Range;

/// Quantized activations of `rows` rows, `blocks` blocks of 32 each.
#[derive(Default)]
pub struct Acts {
    pub rows: usize,
    pub blocks: usize,
    /// [block][rows][32], from a 64-byte boundary.
    pub qs: Lines,
    /// [block][rows]: the scale, x ≈ d·q.
    pub d: Vec<f32>,
    /// [block][rows]: d·Σq, for weight formats with an offset.
    pub s: Vec<f32>,
    /// [block][rows]: d·Σq over the first 16 values, for Q6_K's two offsets per block.
    pub s_lo: Vec<f32>,
    /// [block][rows]: −128·Σq. A dot product that starts from it undoes the +128 bias that
    /// makes Q8_0's weights unsigned for `vpdpbusd` (`vnni`).
    pub unbias: Vec<i32>,
}

impl Acts {
    /// Quantizes `x`, `rows` rows of `blocks`·32 values, reusing the buffers.
    pub fn quantize(&mut self, x: &[f32], rows: usize, blocks: usize) {
        let k = blocks * QK;
        let parts = self.parts(rows, blocks);
        for r in 0..rows {
            // SAFETY: this thread alone writes through `parts`.
            unsafe { parts.quantize(&x[r * k..(r + 1) * k], r, 0..blocks) };
        }
    }

    /// Sizes the arrays for `rows` rows of `blocks` blocks and gives a view through which
    /// tasks quantize disjoint blocks at once, each in the thread that made their values
    /// (`matmul_mlp`). Every entry must be written before the arrays are read: they are not
    /// cleared first (a fresh zero-fill each call showed in an 8-row step's memset).
    pub fn parts(&mut self, rows: usize, blocks: usize) -> Parts<'_> {
        self.rows = rows;
        self.blocks = blocks;
        self.qs.resize(blocks * rows * QK);
        for v in [&mut self.d, &mut self.s, &mut self.s_lo] {
            v.resize(blocks * rows, 0.0);
        }
        self.unbias.resize(blocks * rows, 0);
        Parts {
            qs: self.qs.as_mut_ptr(),
            d: self.d.as_mut_ptr(),
            s: self.s.as_mut_ptr(),
            s_lo: self.s_lo.as_mut_ptr(),
            unbias: self.unbias.as_mut_ptr(),
            rows,
            blocks,
            _acts: std::marker::PhantomData,
        }
    }

    /// Index of (block, row) in `d`, `s`, `s_lo`; times 32 in `qs`.
    pub fn at(&self, block: usize, row: usize) -> usize {
        block * self.rows + row
    }
}

/// `Acts` being written by several tasks, each quantizing blocks no other one does.
pub struct Parts<'a> {
    qs: *mut i8,
    d: *mut f32,
    s: *mut f32,
    s_lo: *mut f32,
    unbias: *mut i32,
    rows: usize,
    blocks: usize,
    _acts: std::marker::PhantomData<&'a mut Acts>,
}

// SAFETY: the tasks that share it write disjoint entries (`quantize`'s contract), and the
// borrow of the arrays outlives them.
unsafe impl Send for Parts<'_> {}
unsafe impl Sync for Parts<'_> {}

impl Parts<'_> {
    /// Quantizes `blocks` of row `row`, from x: their values, `blocks.len()`·32 of them.
    ///
    /// # Safety
    /// No other thread writes these (row, block) entries meanwhile.
    pub unsafe fn quantize(&self, x: &[f32], row: usize, blocks: Range<usize>) {
        assert!(row < self.rows && blocks.end <= self.blocks && x.len() == blocks.len() * QK);
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: this CPU has AVX2; the caller's contract.
            return unsafe { self.quantize_avx2(x, row, blocks) };
        }
        unsafe { self.quantize_with(x, row, blocks, block) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn quantize_avx2(&self, x: &[f32], row: usize, blocks: Range<usize>) {
        unsafe { self.quantize_with(x, row, blocks, |c, qs| block_avx2(c, qs)) }
    }

    /// Fills the entries, quantizing each block with `block` (d, Σq of each half).
    #[inline(always)]
    unsafe fn quantize_with(
        &self,
        x: &[f32],
        row: usize,
        blocks: Range<usize>,
        block: impl Fn(&[f32; QK], &mut [i8; QK]) -> (f32, i32, i32),
    ) {
        for (c, b) in x.chunks_exact(QK).zip(blocks) {
            let at = b * self.rows + row;
            let c: &[f32; QK] = c.try_into().expect("a block of 32");
            // SAFETY: `at` lies in the arrays sized by `Acts::parts`, and only this caller
            // writes it.
            unsafe {
                let (d, lo, hi) = block(c, &mut *(self.qs.add(at * QK) as *mut [i8; QK]));
                *self.d.add(at) = d;
                *self.s.add(at) = d * (lo + hi) as f32;
                *self.s_lo.add(at) = d * lo as f32;
                *self.unbias.add(at) = -128 * (lo + hi);
            }
        }
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
    /// `len` bytes, reusing the allocation: those held before keep their values, new ones
    /// are zero.
    pub fn resize(&mut self, len: usize) {
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

/// One block: d = max|x|/127, q = round(x/d) ties to even; returns d and Σq of each half.
fn block(c: &[f32; QK], qs: &mut [i8; QK]) -> (f32, i32, i32) {
    let d = abs_max(c) / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let q: [i32; QK] = c.map(|v| round_to_int(v * id));
    *qs = q.map(|q| q as i8);
    let lo: i32 = q[..QK / 2].iter().sum();
    let hi: i32 = q[QK / 2..].iter().sum();
    (d, lo, hi)
}

/// `block` in AVX2, the same bits: the same d and 1/d, and `cvtps` rounds ties to even as
/// `round_to_int` does. The compiler left `block` scalar, about 1.6 ns a value.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn block_avx2(c: &[f32; QK], qs: &mut [i8; QK]) -> (f32, i32, i32) {
    use std::arch::x86_64::*;
    let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(c.as_ptr().add(8 * i)));
    let sign = _mm256_set1_ps(-0.0);
    let a: [__m256; 4] = v.map(|x| _mm256_andnot_ps(sign, x));
    let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    let d = _mm_cvtss_f32(m) / 127.0;
    let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    let q: [__m256i; 4] = v.map(|x| _mm256_cvtps_epi32(_mm256_mul_ps(x, id)));
    let hsum = |x: __m256i| {
        let x = _mm_add_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256::<1>(x));
        let x = _mm_hadd_epi32(x, x);
        _mm_cvtsi128_si32(_mm_hadd_epi32(x, x))
    };
    let (lo, hi) = (
        hsum(_mm256_add_epi32(q[0], q[1])),
        hsum(_mm256_add_epi32(q[2], q[3])),
    );
    // The packs work within 128-bit lanes, leaving 4-byte groups in the order
    // q0[0..4] q1[0..4] q2[0..4] q3[0..4] q0[4..8] …; the permute puts them back.
    let b = _mm256_packs_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(qs.as_mut_ptr().cast(), b);
    (d, lo, hi)
}

/// max |x|, by halving: each level is a lane-wise compare and select, which vectorizes where
/// a running `f32::max` (a chain, with its NaN rule) did not.
#[inline(always)]
fn abs_max(x: &[f32; QK]) -> f32 {
    let mut m = [0f32; QK / 2];
    for j in 0..QK / 2 {
        let (a, b) = (x[j].abs(), x[j + QK / 2].abs());
        m[j] = if b > a { b } else { a };
    }
    let mut n = QK / 2;
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
                assert_eq!((a.d[at], a.unbias[at]), (d, -128 * (lo + hi)));
                assert_eq!((a.s[at], a.s_lo[at]), (d * (lo + hi) as f32, d * lo as f32));
            }
        }
    }

    /// The AVX2 block gives the bits of the portable one, ties included: blocks whose
    /// max is 127 make x/d land on halves (2.5, −0.5 …) exactly.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_block_matches_the_portable_one() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 * 2.0 - 1.0
        };
        for case in 0..200 {
            let c: [f32; QK] = match case % 3 {
                0 => std::array::from_fn(|_| next() * 40.0),
                1 => std::array::from_fn(|j| {
                    if j == 3 {
                        -127.0
                    } else {
                        (j as f32 - 16.0) * 0.5
                    }
                }),
                _ => [0.0; QK],
            };
            let (mut want, mut got) = ([0i8; QK], [0i8; QK]);
            let w = block(&c, &mut want);
            // SAFETY: checked above that this CPU has AVX2.
            let g = unsafe { block_avx2(&c, &mut got) };
            assert_eq!((w, want), (g, got), "case {case}");
        }
    }
}
