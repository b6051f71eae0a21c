//! Attention on the CPU for every new position, read straight from the KV cache's f16
//! buffers: a decode step's one position per row, and a prefill's many. candle's batched
//! matmul spends more on setting up each of the B·KV-heads tiny products ([n_rep, D]·[D, L])
//! than on the arithmetic: with 8 rows on smollm2 its GEMM took about a sixth of the step
//! (`perf`). A prefill's positions go through the very loops a decode step's do, each as a
//! row of its own: a position's output has the same bits whether it was prefilled in one
//! piece, in chunks, after a cached prefix, or decoded (candle's GEMM sums in an order that
//! follows the number of rows, so a cached start or a chunk differed from a whole prefill in
//! the last bits, and could flip a near-tied token).
use super::kv_cache::LayerKv;
use super::math::{exp, with_f32};
use super::qmatmul::{pool, Simd};
use anyhow::{bail, Result};
use candle_core::{DType, Storage, Tensor};
use half::f16;
use std::ops::Range;

thread_local! {
    /// A task's scores and widened block, kept for the next task on the thread.
    static SCRATCH: std::cell::Cell<(Vec<f32>, Vec<f32>)> = std::cell::Cell::default();
}

/// Rows sharing a prefix that one task takes: their prefix blocks are widened once for all
/// of them. 4 gives 8 rows of one request 2 tasks per KV head, one per core here.
const ROWS_PER_TASK: usize = 4;

/// The loops attention runs in.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    Portable,
    /// AVX2, FMA and F16C, for D a multiple of 8.
    Avx2,
    /// AVX-512F, for D a multiple of 16: half the multiply-adds and conversions of AVX2. At
    /// 8 smollm2 rows attention's `perf` samples went from 0.48 to 0.40 of the matmul's.
    Avx512,
}

impl Kernel {
    /// The kernels this CPU runs for head size d, slowest first.
    fn here(d: usize) -> Vec<Kernel> {
        let mut here = vec![Kernel::Portable];
        if Simd::Avx2.runs_here() && d.is_multiple_of(8) {
            here.push(Kernel::Avx2);
        }
        if Simd::Avx512.runs_here() && d.is_multiple_of(16) {
            here.push(Kernel::Avx512);
        }
        here
    }
}

/// Attention for T new positions per row. q: [B, T, H, D], already scaled; `kv`: the layer's
/// f16 cache (the new positions appended), whose last axis is contiguous, L = `kv.len`
/// positions in the longest row; mask: additive, [n_rep·T, L] or per row [B, 1, n_rep·T, L]
/// (head-major: head r's position i at r·T + i), None only where it hides nothing. →
/// [B, T, H·D]. Query head h reads KV head h / n_rep, as the grouped layout of
/// `Attention::forward` does.
pub fn attend_rows(
    q: &[f32],
    (b, t, h, d): (usize, usize, usize, usize),
    kv: &LayerKv,
    mask: Option<&Tensor>,
) -> Result<Vec<f32>> {
    let kernel = *Kernel::here(d).last().unwrap();
    attend_values(kernel, q, (b, t, h, d), kv, mask)
}

/// `attend_rows` in the given kernel. The mask's values are borrowed, not copied: every
/// layer of a step reads the same mask.
fn attend_values(
    kernel: Kernel,
    q: &[f32],
    dims: (usize, usize, usize, usize),
    kv: &LayerKv,
    mask: Option<&Tensor>,
) -> Result<Vec<f32>> {
    match mask {
        Some(m) => with_f32(m, |v| attend_masked(kernel, q, dims, kv, v, m.rank() == 4))?,
        None => attend_masked(kernel, q, dims, kv, &[], false),
    }
}

/// `attend_values` with the mask's values (empty: none), per row or shared.
fn attend_masked(
    kernel: Kernel,
    q: &[f32],
    (b, t, h, d): (usize, usize, usize, usize),
    kv: &LayerKv,
    mask: &[f32],
    per_row: bool,
) -> Result<Vec<f32>> {
    let (_, kvh, own, _) = kv.k.dims4()?;
    if t == 0 || h % kvh != 0 {
        bail!("attention takes at least one position per row, and whole groups of heads");
    }
    let n_rep = h / kvh;
    // The storage of every tensor read: the rows' own K and V, then each row's prefix.
    let mut tensors = vec![&kv.k, &kv.v];
    for (k, v) in kv.prefix.iter().flatten() {
        tensors.extend([k, v]);
    }
    if tensors.iter().any(|t| t.dtype() != DType::F16) {
        bail!("CPU attention reads an f16 cache");
    }
    let held: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut views = Vec::with_capacity(held.len());
    for (storage, layout) in &held {
        let Storage::Cpu(c) = &**storage else {
            bail!("this attention runs on the CPU");
        };
        if layout.stride()[3] != 1 {
            bail!("CPU attention needs the cache's head dimension contiguous");
        }
        views.push(View {
            data: c.as_slice::<f16>()?,
            start: layout.start_offset(),
            stride: [layout.stride()[0], layout.stride()[1], layout.stride()[2]],
        });
    }
    let mut views = views.into_iter();
    let (k_own, v_own) = (views.next().unwrap(), views.next().unwrap());
    let (mut k_pre, mut v_pre) = (Vec::with_capacity(b), Vec::with_capacity(b));
    for r in 0..b {
        let p = kv.prefix_len(r);
        let (k, v) = match kv.prefix[r] {
            Some(_) => (views.next(), views.next()),
            None => (None, None),
        };
        k_pre.push((k, p));
        v_pre.push((v, p));
    }
    let zeros = vec![f16::ZERO; d];
    // From here on a row is one new position: row b·T + i is cache row b's position i, with
    // its own queries and output ([B, T, H, D] is [B·T, H, D]).
    let mut y = vec![0f32; b * t * h * d];
    let heads = Heads {
        q,
        k: Cached {
            own: k_own,
            own_len: own,
            prefix: k_pre,
            zeros: &zeros,
            t,
        },
        v: Cached {
            own: v_own,
            own_len: own,
            prefix: v_pre,
            zeros: &zeros,
            t,
        },
        mask,
        per_row,
        t,
        kvh,
        n_rep,
        l: kv.len,
        d,
        out: Out(y.as_mut_ptr()),
    };
    // One task per KV head and run of rows: a run is up to ROWS_PER_TASK rows that share a
    // prefix with SIMD (which reads each prefix block once for the run), else one row. It
    // writes the n_rep heads of that group in its rows.
    let per_task = match kernel {
        Kernel::Portable => 1,
        _ => ROWS_PER_TASK,
    };
    let mut runs: Vec<Range<usize>> = Vec::new();
    for r in 0..b * t {
        let id = |r: usize| kv.prefix[r / t].as_ref().map(|(k, _)| k.id());
        match runs.last_mut() {
            Some(run) if run.len() < per_task && id(r).is_some() && id(run.start) == id(r) => {
                run.end = r + 1
            }
            _ => runs.push(r..r + 1),
        }
    }
    let task = |i: usize| {
        let (rows, g) = (runs[i / kvh].clone(), i % kvh);
        // SAFETY: `Kernel::here` found the kernel's instructions on this CPU and D a multiple
        // of its width; task t alone has these rows of KV head g.
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { heads.chunk_avx512(rows, g) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { heads.chunk_avx2(rows, g) },
            _ => rows.for_each(|row| heads.group(row, g)),
        }
    };
    let tasks = runs.len() * kvh;
    pool::for_each(tasks, &task);
    drop(held);
    Ok(y)
}

/// A [B, KVH, L, D] cache view in its buffer: where it starts, and the steps of its first
/// three axes (the last is contiguous).
struct View<'a> {
    data: &'a [f16],
    start: usize,
    stride: [usize; 3],
}

/// The K or V a row reads: its prefix's positions (a [1, KVH, P, D] view), then its own.
struct Cached<'a> {
    own: View<'a>,
    own_len: usize,
    /// Per row: the prefix, if any, and its length P (0 without).
    prefix: Vec<(Option<View<'a>>, usize)>,
    /// What a position past the row's end reads: its weight is 0, and 0·0 adds nothing.
    zeros: &'a [f16],
    /// New positions per cache row: row r reads cache row r / t.
    t: usize,
}

impl Cached<'_> {
    /// Positions `at` of (row, KV head g), widened to f32 into `block` ([at.len()][D]).
    ///
    /// # Safety
    /// The CPU has L's instructions, and D is a multiple of L::W.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn widen<L: Lanes>(
        &self,
        row: usize,
        g: usize,
        at: Range<usize>,
        d: usize,
        block: &mut [f32],
    ) {
        let to = block[..at.len() * d].as_mut_ptr();
        match self.span(row, g, &at, d) {
            Some((from, step)) => {
                for j in 0..at.len() {
                    L::widen(from.add(j * step), to.add(j * d), d);
                }
            }
            None => {
                for (j, i) in at.enumerate() {
                    L::widen(self.at(row, g, i, d).as_ptr(), to.add(j * d), d);
                }
            }
        }
    }

    /// Where positions `at` of (row, KV head g) lie when one buffer holds them all (the
    /// prefix, or the row's own): the first one's values, and the step to the next. A block
    /// finds them so but where a row ends before L, without a lookup per position.
    fn span(
        &self,
        row: usize,
        g: usize,
        at: &Range<usize>,
        d: usize,
    ) -> Option<(*const f16, usize)> {
        if at.is_empty() {
            return None;
        }
        let row = row / self.t;
        let (prefix, p) = &self.prefix[row];
        let (view, r, i) = match prefix {
            Some(view) if at.end <= *p => (view, 0, at.start),
            _ if at.start >= *p && at.end - p <= self.own_len => (&self.own, row, at.start - p),
            _ => return None,
        };
        // Bounds-checked at both ends: the positions between lie in the same buffer.
        view.at(r, g, i + at.len() - 1, d);
        Some((view.at(r, g, i, d).as_ptr(), view.stride[2]))
    }

    /// Asks for the row's own positions among `at` of (row, KV head g) into L2, a row
    /// ahead of their use.
    #[cfg(target_arch = "x86_64")]
    fn prefetch_own(&self, row: usize, g: usize, at: Range<usize>, d: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let p = self.prefix[row / self.t].1;
        let at = at.start.max(p)..at.end.min(p + self.own_len);
        let Some((from, step)) = self.span(row, g, &at, d) else {
            return;
        };
        for i in 0..at.len() {
            let from = from.wrapping_add(i * step) as *const i8;
            for line in (0..2 * d).step_by(64) {
                // SAFETY: a prefetch does not fault; the address lies in the cache's buffer.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(from.wrapping_add(line)) };
            }
        }
    }

    /// Position i's D values of (row's cache row, KV head g).
    fn at(&self, row: usize, g: usize, i: usize, d: usize) -> &[f16] {
        let row = row / self.t;
        let (prefix, p) = &self.prefix[row];
        match prefix {
            Some(view) if i < *p => view.at(0, g, i, d),
            _ if i - p < self.own_len => self.own.at(row, g, i - p, d),
            _ => &self.zeros[..d],
        }
    }
}

impl View<'_> {
    /// Position i's D values of (row, KV head g).
    fn at(&self, row: usize, g: usize, i: usize, d: usize) -> &[f16] {
        let [b, h, l] = self.stride;
        &self.data[self.start + row * b + g * h + i * l..][..d]
    }
}

/// What every (row, KV head) task reads, and where it writes.
struct Heads<'a> {
    q: &'a [f32],
    k: Cached<'a>,
    v: Cached<'a>,
    mask: &'a [f32],
    per_row: bool,
    /// New positions per cache row (the mask's rows per head).
    t: usize,
    kvh: usize,
    n_rep: usize,
    l: usize,
    d: usize,
    out: Out,
}

impl Heads<'_> {
    fn query(&self, row: usize, g: usize, r: usize) -> &[f32] {
        let h = self.kvh * self.n_rep;
        &self.q[(row * h + g * self.n_rep + r) * self.d..][..self.d]
    }

    /// The output of the group's n_rep heads, [n_rep·D].
    ///
    /// # Safety
    /// Only the task that has (row, g) may call it: it alone writes these heads, which lie next to each
    /// other, and the output outlives the tasks.
    #[allow(clippy::mut_from_ref)]
    unsafe fn output(&self, row: usize, g: usize) -> &mut [f32] {
        let h = self.kvh * self.n_rep;
        self.out
            .slice((row * h + g * self.n_rep) * self.d, self.n_rep * self.d)
    }

    /// The mask of row's head r (of its group), [L]: None where nothing is hidden.
    fn hidden(&self, row: usize, r: usize) -> Option<&[f32]> {
        let (l, t) = (self.l, self.t);
        let (b, i) = (row / t, row % t);
        match (self.mask.is_empty(), self.per_row) {
            (true, _) => None,
            (false, false) => Some(&self.mask[(r * t + i) * l..][..l]),
            (false, true) => Some(&self.mask[((b * self.n_rep + r) * t + i) * l..][..l]),
        }
    }

    /// The positions row reads: up to its last one that any head sees (L without a mask).
    /// A prefill's row stops at its own position, which halves the work of a causal
    /// prefill; a decode row shorter than the batch stops at its end. What lies past weighs
    /// exactly 0 and adds nothing, so the bits are those of reading all L.
    fn seen(&self, row: usize) -> usize {
        (0..self.n_rep)
            .filter_map(|r| self.hidden(row, r))
            .map(|m| {
                m.iter()
                    .rposition(|&m| m != f32::NEG_INFINITY)
                    .map_or(0, |i| i + 1)
            })
            .max()
            .unwrap_or(self.l)
    }

    /// Turns the scores of head r, `p[r·stride..][..l]`, into softmax weights, the row's
    /// first l positions (those past weigh 0). A hidden position weighs exactly 0, not exp's
    /// floor e^−87.
    #[inline(always)]
    fn softmax(&self, row: usize, p: &mut [f32], stride: usize, l: usize) {
        for r in 0..self.n_rep {
            let p = &mut p[r * stride..][..l];
            let m = self.hidden(row, r).map(|m| &m[..l]);
            if let Some(m) = m {
                for (s, &m) in p.iter_mut().zip(m) {
                    *s += m;
                }
            }
            let max = max16(p);
            for s in p.iter_mut() {
                *s = exp(*s - max);
            }
            if let Some(m) = m {
                for (s, &m) in p.iter_mut().zip(m) {
                    *s = if m == f32::NEG_INFINITY { 0.0 } else { *s };
                }
            }
            let sum = sum8(p);
            for s in p.iter_mut() {
                *s /= sum;
            }
        }
    }

    /// The n_rep query heads of (row, KV head g), portably. Each key and value is
    /// widened once for all of them (they share the KV head), not once per head.
    fn group(&self, row: usize, g: usize) {
        let (n_rep, l, d) = (self.n_rep, self.l, self.d);
        let mut p = vec![0f32; n_rep * l]; // [n_rep][L]
        let mut wide = vec![0f32; d];
        for i in 0..l {
            widen(self.k.at(row, g, i, d), &mut wide);
            for r in 0..n_rep {
                p[r * l + i] = dot(self.query(row, g, r), &wide);
            }
        }
        self.softmax(row, &mut p, l, l);
        // SAFETY: the caller's task has (row, g).
        let y = unsafe { self.output(row, g) };
        for i in 0..l {
            widen(self.v.at(row, g, i, d), &mut wide);
            for (yh, w) in y.chunks_exact_mut(d).zip(p.chunks_exact(l)) {
                for (y, &v) in yh.iter_mut().zip(&wide) {
                    *y += w[i] * v;
                }
            }
        }
    }

    /// `group` with SIMD for several rows that share a prefix (or one row): W positions at
    /// a time, their keys or values widened into a block once for all n_rep heads, and a
    /// prefix block once for every row of the chunk. A score is one position's dot product,
    /// summed the same way wherever the position falls, and a row's output adds its positions
    /// in order, so a row gives the same bits alone, under any longer batch row (its hidden
    /// positions weigh 0), and reading its prefix shared or from its own buffer.
    ///
    /// # Safety
    /// The CPU has L's instructions, D is a multiple of L::W, and only this task writes these
    /// rows' heads of KV head g.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunk<L: Lanes>(&self, rows: Range<usize>, g: usize) {
        let (n_rep, l, d, w) = (self.n_rep, self.l, self.d, L::W);
        // Blocks after a prefix start where it ends, not at a multiple of W, and store W
        // lanes: room for W past L.
        let lp = l.next_multiple_of(w) + w;
        let pre = self.k.prefix[rows.start / self.t].1;
        // Reused from task to task on this thread: every value of p is written before it is
        // read, and the lanes of a block past its positions make scores that are never read.
        let (mut p, mut scratch) = SCRATCH.take();
        // [row][n_rep][lp]
        p.resize(rows.len() * n_rep * lp, 0.0);
        // The block from a 64-byte boundary: each of its vectors is then one cache line, where
        // from malloc's 16 bytes every store and load spanned two (8 smollm2 rows: 5–10 % of
        // decode attention).
        scratch.resize(w * d + 16, 0.0);
        let skew = scratch.as_ptr().align_offset(64).min(16);
        let block = &mut scratch[skew..skew + w * d]; // [W][D]
        let blocks =
            |from: usize, to: usize| (from..to).step_by(w).map(move |i0| (i0, (to - i0).min(w)));
        // Scores, prefix blocks first: the own blocks that follow overwrite the lanes a
        // prefix block stores past its end.
        for (i0, n) in blocks(0, pre) {
            self.k.widen::<L>(rows.start, g, i0..i0 + n, d, block);
            for c in 0..rows.len() {
                L::scores(
                    self,
                    rows.start + c,
                    g,
                    block,
                    &mut p[c * n_rep * lp..],
                    lp,
                    i0,
                );
            }
        }
        // Each row's positions: its prefix's, then its own up to the last it sees.
        let ends: Vec<usize> = rows.clone().map(|row| self.seen(row).max(pre)).collect();
        let end = |row: usize| ends[row - rows.start];
        self.k.prefetch_own(rows.start, g, pre..end(rows.start), d);
        for (c, row) in rows.clone().enumerate() {
            if row + 1 < rows.end {
                self.k.prefetch_own(row + 1, g, pre..end(row + 1), d);
            } else {
                self.v.prefetch_own(rows.start, g, pre..end(rows.start), d);
            }
            for (i0, n) in blocks(pre, end(row)) {
                self.k.widen::<L>(row, g, i0..i0 + n, d, block);
                L::scores(self, row, g, block, &mut p[c * n_rep * lp..], lp, i0);
            }
            self.softmax(row, &mut p[c * n_rep * lp..], lp, end(row));
        }
        // Values, in position order for every row.
        for (i0, n) in blocks(0, pre) {
            self.v.widen::<L>(rows.start, g, i0..i0 + n, d, block);
            for (c, row) in rows.clone().enumerate() {
                L::add_values(self, row, g, block, &p[c * n_rep * lp..], lp, i0, n);
            }
        }
        for (c, row) in rows.clone().enumerate() {
            if row + 1 < rows.end {
                self.v.prefetch_own(row + 1, g, pre..end(row + 1), d);
            }
            for (i0, n) in blocks(pre, end(row)) {
                self.v.widen::<L>(row, g, i0..i0 + n, d, block);
                L::add_values(self, row, g, block, &p[c * n_rep * lp..], lp, i0, n);
            }
        }
        SCRATCH.set((p, scratch));
    }

    /// `chunk` with AVX2.
    ///
    /// # Safety
    /// As `chunk`, for `Avx2`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk_avx2(&self, rows: Range<usize>, g: usize) {
        self.chunk::<Avx2>(rows, g)
    }

    /// `chunk` with AVX-512.
    ///
    /// # Safety
    /// As `chunk`, for `Avx512`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn chunk_avx512(&self, rows: Range<usize>, g: usize) {
        self.chunk::<Avx512>(rows, g)
    }
}

/// One SIMD width's pieces of `Heads::chunk`: W positions to a block. Each is compiled for
/// its instructions, and inlined into the `chunk` compiled for them.
#[cfg(target_arch = "x86_64")]
trait Lanes {
    const W: usize;

    /// D f16 values at `from` → f32 at `to`.
    unsafe fn widen(from: *const f16, to: *mut f32, d: usize);

    /// The scores of the W positions from i0 in `block`, for each of (row, g)'s heads:
    /// `p[r·lp + i0..][..W]`.
    unsafe fn scores(
        h: &Heads,
        row: usize,
        g: usize,
        block: &[f32],
        p: &mut [f32],
        lp: usize,
        i0: usize,
    );

    /// Adds the n values in `block` (positions from i0), weighted, to (row, g)'s heads.
    #[allow(clippy::too_many_arguments)]
    unsafe fn add_values(
        h: &Heads,
        row: usize,
        g: usize,
        block: &[f32],
        p: &[f32],
        lp: usize,
        i0: usize,
        n: usize,
    );
}

#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2 {
    const W: usize = 8;

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn widen(from: *const f16, to: *mut f32, d: usize) {
        use std::arch::x86_64::*;
        for x in (0..d).step_by(8) {
            let h = _mm_loadu_si128(from.add(x) as *const __m128i);
            _mm256_storeu_ps(to.add(x), _mm256_cvtph_ps(h));
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn scores(
        h: &Heads,
        row: usize,
        g: usize,
        block: &[f32],
        p: &mut [f32],
        lp: usize,
        i0: usize,
    ) {
        use std::arch::x86_64::*;
        let d = h.d;
        for r in 0..h.n_rep {
            let q = h.query(row, g, r).as_ptr();
            let mut acc = [_mm256_setzero_ps(); 8];
            for x in (0..d).step_by(8) {
                let qx = _mm256_loadu_ps(q.add(x));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qx, _mm256_loadu_ps(block.as_ptr().add(j * d + x)), *a);
                }
            }
            let to = &mut p[r * lp + i0..][..8];
            _mm256_storeu_ps(to.as_mut_ptr(), sum_each_avx2(acc));
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn add_values(
        h: &Heads,
        row: usize,
        g: usize,
        block: &[f32],
        p: &[f32],
        lp: usize,
        i0: usize,
        n: usize,
    ) {
        let d = h.d;
        // SAFETY: the caller's task alone writes (row, g).
        let y = h.output(row, g);
        for r in 0..h.n_rep {
            let w = &p[r * lp + i0..][..n];
            let yh = y[r * d..].as_mut_ptr();
            if d.is_multiple_of(64) {
                for x in (0..d).step_by(64) {
                    add_weighted_avx2::<8>(yh.add(x), block.as_ptr().add(x), d, w);
                }
            } else {
                for x in (0..d).step_by(8) {
                    add_weighted_avx2::<1>(yh.add(x), block.as_ptr().add(x), d, w);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512 {
    const W: usize = 16;

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn widen(from: *const f16, to: *mut f32, d: usize) {
        use std::arch::x86_64::*;
        for x in (0..d).step_by(16) {
            let h = _mm256_loadu_si256(from.add(x) as *const __m256i);
            _mm512_storeu_ps(to.add(x), _mm512_cvtph_ps(h));
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn scores(
        h: &Heads,
        row: usize,
        g: usize,
        block: &[f32],
        p: &mut [f32],
        lp: usize,
        i0: usize,
    ) {
        use std::arch::x86_64::*;
        let d = h.d;
        for r in 0..h.n_rep {
            let q = h.query(row, g, r).as_ptr();
            let mut acc = [_mm512_setzero_ps(); 16];
            for x in (0..d).step_by(16) {
                let qx = _mm512_loadu_ps(q.add(x));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(qx, _mm512_loadu_ps(block.as_ptr().add(j * d + x)), *a);
                }
            }
            let to = &mut p[r * lp + i0..][..16];
            _mm512_storeu_ps(to.as_mut_ptr(), sum_each_avx512(acc));
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn add_values(
        h: &Heads,
        row: usize,
        g: usize,
        block: &[f32],
        p: &[f32],
        lp: usize,
        i0: usize,
        n: usize,
    ) {
        // Three heads at a time: with 4 vectors per head, 12 sums in flight hide the
        // latency of each one's chain of fused multiply-adds (4 alone ran at half speed).
        let d = h.d;
        // SAFETY: the caller's task alone writes (row, g).
        let y = h.output(row, g).as_mut_ptr();
        for r0 in (0..h.n_rep).step_by(3) {
            let w = |r: usize| &p[(r0 + r) * lp + i0..][..n];
            let y = y.add(r0 * d);
            match h.n_rep - r0 {
                1 => add_weighted_avx512::<1>(y, block.as_ptr(), d, [w(0)]),
                2 => add_weighted_avx512::<2>(y, block.as_ptr(), d, [w(0), w(1)]),
                _ => add_weighted_avx512::<3>(y, block.as_ptr(), d, [w(0), w(1), w(2)]),
            }
        }
    }
}

/// f16 → f32, one value at a time.
fn widen(from: &[f16], to: &mut [f32]) {
    for (t, f) in to.iter_mut().zip(from) {
        *t = f.to_f32();
    }
}

/// Σ q·k in eight lanes, so the loop vectorizes.
fn dot(q: &[f32], k: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    for (q, k) in q.chunks_exact(8).zip(k.chunks_exact(8)) {
        for j in 0..8 {
            lanes[j] += q[j] * k[j];
        }
    }
    let whole = q.len() - q.len() % 8;
    let mut dot = lanes.iter().sum::<f32>();
    for j in whole..q.len() {
        dot += q[j] * k[j];
    }
    dot
}

/// The sums of eight vectors' lanes, as one vector: lane j holds Σ a[j].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn sum_each_avx2(a: [std::arch::x86_64::__m256; 8]) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // hadd(x, y) = [x0+x1, x2+x3, y0+y1, y2+y3 | x4+x5, x6+x7, y4+y5, y6+y7]
    let ab = _mm256_hadd_ps(a[0], a[1]);
    let cd = _mm256_hadd_ps(a[2], a[3]);
    let ef = _mm256_hadd_ps(a[4], a[5]);
    let gh = _mm256_hadd_ps(a[6], a[7]);
    let abcd = _mm256_hadd_ps(ab, cd); // [Σa0..3, Σb0..3, Σc0..3, Σd0..3 | the same of 4..7]
    let efgh = _mm256_hadd_ps(ef, gh);
    let low = _mm256_permute2f128_ps::<0x20>(abcd, efgh);
    let high = _mm256_permute2f128_ps::<0x31>(abcd, efgh);
    _mm256_add_ps(low, high)
}

/// y[..8·W] += Σ_j w[j] · block[j·D..][..8·W], the positions j in order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn add_weighted_avx2<const W: usize>(y: *mut f32, block: *const f32, d: usize, w: &[f32]) {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); W];
    for (u, a) in acc.iter_mut().enumerate() {
        *a = _mm256_loadu_ps(y.add(8 * u));
    }
    for (j, &wj) in w.iter().enumerate() {
        let wj = _mm256_set1_ps(wj);
        for (u, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(wj, _mm256_loadu_ps(block.add(j * d + 8 * u)), *a);
        }
    }
    for (u, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(y.add(8 * u), *a);
    }
}

/// The sums of sixteen vectors' lanes, as one vector: lane j holds Σ a[j], every one summed
/// in the same order (halves, quarters, then pairs): a position's score does not depend on
/// its lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn sum_each_avx512(a: [std::arch::x86_64::__m512; 16]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // Two vectors into one: x's lanes i + (i + 8) in lanes 0..8, y's in 8..16.
    let halves = |x: __m512, y: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(x, y),
            _mm512_shuffle_f32x4::<0xEE>(x, y),
        )
    };
    // Two of those into one: each 128-bit quarter a vector's lanes i + (i + 4).
    let quarters = |x: __m512, y: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(x, y),
            _mm512_shuffle_f32x4::<0xDD>(x, y),
        )
    };
    let h: [__m512; 8] = std::array::from_fn(|i| halves(a[2 * i], a[2 * i + 1]));
    // Quarter k of q[m] holds vector 4m + k.
    let q: [__m512; 4] = std::array::from_fn(|m| quarters(h[2 * m], h[2 * m + 1]));
    // Within each quarter: [x0 + x2, y0 + y2, x1 + x3, y1 + y3] of vectors k and k + 4
    // (and 8 + k, 12 + k).
    let pairs =
        |x: __m512, y: __m512| _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
    let (lo, hi) = (pairs(q[0], q[1]), pairs(q[2], q[3]));
    let (lo, hi) = (_mm512_castps_pd(lo), _mm512_castps_pd(hi));
    // Lane 4k + m: vector k + 4m.
    let sums = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi));
    let sums = _mm512_add_ps(sums, _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi)));
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_permutexvar_ps(order, sums)
}

/// For each of H heads (their outputs D apart from y): y_r += Σ_j w_r[j] · block[j·D..][..D],
/// the positions j in order, 64 values at a time (or 16 where D is not a multiple of 64):
/// the same operations per value as `add_weighted_avx2`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn add_weighted_avx512<const H: usize>(
    y: *mut f32,
    block: *const f32,
    d: usize,
    w: [&[f32]; H],
) {
    if d.is_multiple_of(64) {
        for x in (0..d).step_by(64) {
            add_weighted_avx512_at::<H, 4>(y.add(x), block.add(x), d, w);
        }
    } else {
        for x in (0..d).step_by(16) {
            add_weighted_avx512_at::<H, 1>(y.add(x), block.add(x), d, w);
        }
    }
}

/// `add_weighted_avx512` for the 16·V values from y (and block).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn add_weighted_avx512_at<const H: usize, const V: usize>(
    y: *mut f32,
    block: *const f32,
    d: usize,
    w: [&[f32]; H],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); V]; H];
    for (r, a) in acc.iter_mut().enumerate() {
        for (u, a) in a.iter_mut().enumerate() {
            *a = _mm512_loadu_ps(y.add(r * d + 16 * u));
        }
    }
    for j in 0..w[0].len() {
        let v: [__m512; V] = std::array::from_fn(|u| _mm512_loadu_ps(block.add(j * d + 16 * u)));
        for (a, w) in acc.iter_mut().zip(&w) {
            let wj = _mm512_set1_ps(*w.get_unchecked(j));
            for (a, v) in a.iter_mut().zip(&v) {
                *a = _mm512_fmadd_ps(wj, *v, *a);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (u, a) in a.iter().enumerate() {
            _mm512_storeu_ps(y.add(r * d + 16 * u), *a);
        }
    }
}

/// Σ x in eight lanes, position i in lane i mod 8 (the tail too). A row shorter than the
/// batch's longest has zeros past its end, and adding a zero to a lane is exact, so the row
/// sums to the same bits at any batch length: a job answers the same alone and batched.
#[inline(always)]
fn sum8(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    for c in x.chunks(8) {
        for (lane, &v) in lanes.iter_mut().zip(c) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>()
}

/// The largest of x: sixteen running maxima, so the loop vectorizes (one chain of `max`
/// was a tenth of decode attention). The maximum is exact in any order.
#[inline(always)]
fn max16(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let whole = x.len() - x.len() % 16;
    for c in x[..whole].chunks_exact(16) {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let tail = x[whole..].iter().copied().fold(f32::NEG_INFINITY, f32::max);
    lanes.iter().copied().fold(tail, f32::max)
}

/// The output shared by the tasks, each writing its own heads.
#[derive(Clone, Copy)]
struct Out(*mut f32);
impl Out {
    /// # Safety
    /// `at..at + len` lies in the output, and no other task uses it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, at: usize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(at), len)
    }
}

// SAFETY: tasks write disjoint heads, and `attend_values` outlives them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// `decode_rows` in the given kernel, on tensors: q [B, H, 1, D] → [B, 1, H·D].
    fn decode_on(
        kernel: Kernel,
        q: &Tensor,
        kv: &LayerKv,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, h, t, d) = q.dims4()?;
        let q: Vec<f32> = q.flatten_all()?.to_vec1()?;
        let y = attend_values(kernel, &q, (b, t, h, d), kv, mask)?;
        Ok(Tensor::from_vec(y, (b, 1, h * d), &Device::Cpu)?)
    }

    /// K and V read whole, without a prefix.
    fn plain(k: &Tensor, v: &Tensor) -> LayerKv {
        LayerKv {
            k: k.clone(),
            v: v.clone(),
            prefix: vec![None; k.dim(0).unwrap()],
            len: k.dim(2).unwrap(),
        }
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// A random [B, KVH, cap, D] cache, stored as f16 like the model's.
    fn f16_cache(b: usize, kvh: usize, cap: usize, d: usize) -> Tensor {
        let t = Tensor::randn(0f32, 1.0, (b, kvh, cap, d), &Device::Cpu).unwrap();
        t.to_dtype(DType::F16).unwrap()
    }

    /// candle's grouped attention, as `Attention::forward` computes it for longer inputs.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let (b, h, _, d) = q.dims4().unwrap();
        let kvh = k.dim(1).unwrap();
        let q = q.reshape((b, kvh, h / kvh, d)).unwrap();
        let (k, v) = (
            k.to_dtype(DType::F32).unwrap(),
            v.to_dtype(DType::F32).unwrap(),
        );
        let att = q.matmul(&k.t().unwrap()).unwrap();
        let att = match mask {
            Some(m) => att.broadcast_add(m).unwrap(),
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att).unwrap();
        att.matmul(&v.contiguous().unwrap())
            .unwrap()
            .reshape((b, 1, h * d))
            .unwrap()
    }

    /// A row's output has the same bits whatever the batch's longest row: the engine's
    /// continuous batching relies on a job answering exactly as it does alone.
    #[test]
    fn a_row_gives_the_same_bits_under_a_longer_batch() {
        // D = 20 runs only the portable loops, 64 every kernel of this CPU.
        for d in [20, 64] {
            for kernel in Kernel::here(d) {
                same_bits_under_a_longer_batch(kernel, d);
            }
        }
    }

    fn same_bits_under_a_longer_batch(kernel: Kernel, d: usize) {
        let decode =
            |q: &Tensor, kv: &LayerKv, mask: Option<&Tensor>| decode_on(kernel, q, kv, mask);
        let dev = Device::Cpu;
        let (kvh, n_rep, cap) = (2, 3, 64);
        let q = Tensor::randn(0f32, 1.0, (1, kvh * n_rep, 1, d), &dev).unwrap();
        let k = f16_cache(1, kvh, cap, d);
        let v = f16_cache(1, kvh, cap, d);
        for own in [5, 13, 31, 39] {
            let view = |t: &Tensor, l| t.narrow(2, 0, l).unwrap();
            let alone = decode(&q, &plain(&view(&k, own), &view(&v, own)), None).unwrap();
            for longest in [own + 1, own + 9, cap] {
                let hide: Vec<f32> = (0..n_rep * longest)
                    .map(|i| {
                        if i % longest < own {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                    .collect();
                let mask = Tensor::from_vec(hide, (1, 1, n_rep, longest), &dev).unwrap();
                let (k, v) = (view(&k, longest), view(&v, longest));
                let batched = decode(&q, &plain(&k, &v), Some(&mask)).unwrap();
                assert_eq!(
                    bits(&alone),
                    bits(&batched),
                    "{kernel:?}, D {d}: {own} under {longest}"
                );
            }
        }
    }

    #[test]
    fn matches_candles_attention_on_cache_views_with_masks() {
        // D = 20 runs the portable loops; 72 AVX2's narrow ones, 80 AVX-512's; 64 and 128
        // the wide ones of both.
        for d in [20, 64, 72, 80, 128] {
            for kernel in Kernel::here(d) {
                matches_candles_attention(kernel, d);
            }
        }
    }

    fn matches_candles_attention(kernel: Kernel, d: usize) {
        for (cap, l) in [(16, 11), (64, 50)] {
            matches_candles_attention_at(kernel, d, cap, l);
        }
    }

    fn matches_candles_attention_at(kernel: Kernel, d: usize, cap: usize, l: usize) {
        let dev = Device::Cpu;
        let (b, kvh, n_rep) = (3, 2, 3);
        let q = Tensor::randn(0f32, 1.0, (b, kvh * n_rep, 1, d), &dev).unwrap();
        let k = f16_cache(b, kvh, cap, d);
        let v = f16_cache(b, kvh, cap, d);
        let (k, v) = (k.narrow(2, 0, l).unwrap(), v.narrow(2, 0, l).unwrap());
        // Hide the first 4 positions for every row, and per row a different tail.
        let shared: Vec<f32> = (0..n_rep * l)
            .map(|i| if i % l < 4 { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let shared = Tensor::from_vec(shared, (n_rep, l), &dev).unwrap();
        let rows: Vec<f32> = (0..b * n_rep * l)
            .map(|i| {
                if i % l > 6 + i / (n_rep * l) {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let rows = Tensor::from_vec(rows, (b, 1, n_rep, l), &dev).unwrap();
        for mask in [None, Some(&shared), Some(&rows)] {
            let got = decode_on(kernel, &q, &plain(&k, &v), mask).unwrap();
            let want = reference(&q, &k, &v, mask);
            let diff = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max(D::Minus1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "{kernel:?}, D = {d}: max difference {diff}");
        }
    }

    /// A prefill's positions, after a cached prefix (row 0) or none (row 1), under the
    /// causal mask the transformer makes: each has the bits of its own decode step, the
    /// cache then ending at it. So a prompt answers the same prefilled whole, in chunks, or
    /// after a cached start, and a decoded token's K and V are those a prefill would make.
    #[test]
    fn a_prefilled_position_gives_the_bits_of_its_decode_step() {
        for d in [20, 64] {
            for kernel in Kernel::here(d) {
                prefilled_position_gives_its_decode_bits(kernel, d);
            }
        }
    }

    fn prefilled_position_gives_its_decode_bits(kernel: Kernel, d: usize) {
        let dev = Device::Cpu;
        let (kvh, n_rep, t, pre) = (2, 3, 21, 13);
        let (b, h) = (2, kvh * n_rep);
        let q = Tensor::randn(0f32, 1.0, (b, t, h, d), &dev).unwrap();
        let prefix = (f16_cache(1, kvh, pre, d), f16_cache(1, kvh, pre, d));
        let (k, v) = (f16_cache(b, kvh, t, d), f16_cache(b, kvh, t, d));
        let starts = [pre, 0];
        let l = pre + t;
        let hide: Vec<f32> = (0..b * n_rep * t * l)
            .map(|x| {
                let (row, i, k) = (x / (n_rep * t * l), x / l % t, x % l);
                if k <= starts[row] + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let mask = Tensor::from_vec(hide, (b, 1, n_rep * t, l), &dev).unwrap();
        let kv = LayerKv {
            k: k.clone(),
            v: v.clone(),
            prefix: vec![Some(prefix.clone()), None],
            len: l,
        };
        let flat: Vec<f32> = q.flatten_all().unwrap().to_vec1().unwrap();
        let got = attend_values(kernel, &flat, (b, t, h, d), &kv, Some(&mask)).unwrap();
        for (row, start) in starts.into_iter().enumerate() {
            for i in 0..t {
                let own = |x: &Tensor| x.narrow(0, row, 1).unwrap().narrow(2, 0, i + 1).unwrap();
                let step = LayerKv {
                    k: own(&k),
                    v: own(&v),
                    prefix: vec![(row == 0).then(|| prefix.clone())],
                    len: start + i + 1,
                };
                let qi = q.narrow(0, row, 1).unwrap().narrow(1, i, 1).unwrap();
                let qi: Vec<f32> = qi.flatten_all().unwrap().to_vec1().unwrap();
                let want = attend_values(kernel, &qi, (1, 1, h, d), &step, None).unwrap();
                let at = (row * t + i) * h * d;
                let bits = |y: &[f32]| y.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got[at..at + h * d]),
                    bits(&want),
                    "{kernel:?}, D {d}: row {row}, position {i}"
                );
            }
        }
    }

    /// Rows that read their first positions from a shared prefix get the bits they get
    /// from one buffer holding everything, also when a longer prefix makes the batch's L
    /// reach past a row's own positions.
    #[test]
    fn a_shared_prefix_reads_as_one_buffer() {
        for d in [20, 64] {
            for kernel in Kernel::here(d) {
                shared_prefix_reads_as_one_buffer(kernel, d);
            }
        }
    }

    fn shared_prefix_reads_as_one_buffer(kernel: Kernel, d: usize) {
        let decode =
            |q: &Tensor, kv: &LayerKv, mask: Option<&Tensor>| decode_on(kernel, q, kv, mask);
        let dev = Device::Cpu;
        let (kvh, n_rep, own) = (2, 3, 11); // L = 32: blocks from 12 and 21 reach past it
        let (b, h) = (3, kvh * n_rep);
        let q = Tensor::randn(0f32, 1.0, (b, h, 1, d), &dev).unwrap();
        // Row 0 and 1 continue a 12-long prefix, row 2 a 21-long one.
        let (short, long) = (12, 21);
        let pre = [f16_cache(1, kvh, long, d), f16_cache(1, kvh, long, d)];
        let own_k = f16_cache(b, kvh, own, d);
        let own_v = f16_cache(b, kvh, own, d);
        let lens = [short + own, short + own, long + own];
        let l = long + own;
        let prefix = |p: usize| {
            Some((
                pre[0].narrow(2, 0, p).unwrap(),
                pre[1].narrow(2, 0, p).unwrap(),
            ))
        };
        let kv = LayerKv {
            k: own_k,
            v: own_v,
            prefix: vec![prefix(short), prefix(short), prefix(long)],
            len: l,
        };
        let hide: Vec<f32> = (0..b * n_rep * l)
            .map(|i| {
                if i % l < lens[i / (n_rep * l)] {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let mask = Tensor::from_vec(hide, (b, 1, n_rep, l), &dev).unwrap();
        let got = decode(&q, &kv, Some(&mask)).unwrap();
        let (k, v) = kv.whole().unwrap();
        assert_eq!(k.dims4().unwrap(), (b, kvh, l, d));
        let want = decode(&q, &plain(&k, &v), Some(&mask)).unwrap();
        assert_eq!(bits(&got), bits(&want), "{kernel:?}, D {d}");
        // Row 0 alone, its prefix and own positions in one buffer.
        let (k0, v0) = (
            k.narrow(0, 0, 1).unwrap().narrow(2, 0, lens[0]).unwrap(),
            v.narrow(0, 0, 1).unwrap().narrow(2, 0, lens[0]).unwrap(),
        );
        let alone = decode(&q.narrow(0, 0, 1).unwrap(), &plain(&k0, &v0), None).unwrap();
        assert_eq!(
            bits(&alone),
            bits(&got.narrow(0, 0, 1).unwrap()),
            "{kernel:?}, D {d}: row 0"
        );
    }
}
