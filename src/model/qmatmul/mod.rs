//! Quantized matmul with batch reuse: each weight block is unpacked once and multiplied with
//! every activation row, so B rows cost far less than B separate products.
//!
//! Activations are quantized to 8 bits in blocks of 32 (`acts`), and weight blocks are
//! multiplied with integer dot products, as llama.cpp does (`ggml-quants.c`:
//! `quantize_row_q8_0`, `ggml_vec_dot_q4_0_q8_0` …). Weight formats: Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0, Q4_K and Q6_K, in ggml's block layouts (`formats`).
//!
//! Four paths; the fastest this CPU runs is chosen once at run time: AMX (Intel's tile
//! multiply, and VNNI for up to 8 rows) and AVX-512 VNNI (`vnni`), both on weights packed
//! for them at load (`pack`); AVX2+FMA on GGUF's own blocks; and scalar, the reference the
//! others are tested against.
//! `CONCLAVE_SIMD=scalar|avx2|avx512|amx` picks one (an error if this CPU lacks it),
//! `CONCLAVE_NO_SIMD=1` forces the scalar one.
mod acts;
#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod formats;
mod pack;
mod pages;
pub(super) mod pool;
mod scalar;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod vnni;

use acts::Acts;
use anyhow::{bail, Result};
use candle_core::quantized::GgmlDType;
pub use pack::Packed;
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;

/// Formats with a kernel here.
pub fn supported(dtype: GgmlDType) -> bool {
    formats::id(dtype).is_some()
}

/// An instruction set a kernel is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    Scalar,
    Avx2,
    Avx512,
    Amx,
}

impl Simd {
    /// Every path this CPU can run, slowest first.
    pub fn available() -> Vec<Simd> {
        [Simd::Scalar, Simd::Avx2, Simd::Avx512, Simd::Amx]
            .into_iter()
            .filter(|s| s.runs_here())
            .collect()
    }

    /// Whether this CPU has the instructions of the path (AVX2 includes FMA and F16C).
    pub fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            match self {
                Simd::Scalar => true,
                Simd::Avx2 => avx2,
                Simd::Avx512 => {
                    avx2 && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512dq")
                        && is_x86_feature_detected!("avx512vl")
                        && is_x86_feature_detected!("avx512vnni")
                }
                Simd::Amx => Simd::Avx512.runs_here() && amx::available(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Simd::Scalar
        }
    }

    /// Whether the path reads weights in the `pack` layout rather than GGUF's.
    pub fn packs(self) -> bool {
        matches!(self, Simd::Amx | Simd::Avx512)
    }

    /// The path asked for by `CONCLAVE_SIMD` (`scalar`, `avx2`, `avx512`, `amx`) or
    /// `CONCLAVE_NO_SIMD`, else the fastest one this CPU runs.
    pub fn choose(simd: Option<&str>, no_simd: bool) -> Result<Simd> {
        let asked = match simd.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") if no_simd => Simd::Scalar,
            None | Some("") => return Ok(*Simd::available().last().unwrap()),
            Some("scalar") => Simd::Scalar,
            Some("avx2") => Simd::Avx2,
            Some("avx512") => Simd::Avx512,
            Some("amx") => Simd::Amx,
            Some(other) => {
                bail!("CONCLAVE_SIMD={other} is not a kernel path: use scalar, avx2, avx512 or amx")
            }
        };
        if !asked.runs_here() {
            bail!(
                "CONCLAVE_SIMD asks for {asked:?}, which this CPU cannot run: use one of {:?}",
                Simd::available()
            );
        }
        Ok(asked)
    }

    /// The path from the environment, read once.
    pub fn from_env() -> Result<Simd> {
        static CHOSEN: OnceLock<Result<Simd, String>> = OnceLock::new();
        CHOSEN
            .get_or_init(|| {
                let simd = std::env::var("CONCLAVE_SIMD").ok();
                let no_simd = std::env::var_os("CONCLAVE_NO_SIMD").is_some_and(|v| v != "0");
                Simd::choose(simd.as_deref(), no_simd).map_err(|e| e.to_string())
            })
            .clone()
            .map_err(anyhow::Error::msg)
    }
}

/// out[m][n] = x[m][k] · w[n][k]ᵀ, where `w` holds `n` rows of quantized blocks.
pub fn matmul(
    dtype: GgmlDType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    out: &mut [f32],
) -> Result<()> {
    matmul_with(Simd::from_env()?, dtype, w, n, k, x, out)
}

/// One weight matrix: `n` rows of quantized blocks in `dtype`, as GGUF stores them, or
/// packed for the path that reads them so (`Simd::packs`).
#[derive(Clone, Copy)]
pub enum Weight<'a> {
    Rows {
        dtype: GgmlDType,
        data: &'a [u8],
        n: usize,
    },
    Packed(&'a Packed),
}

impl Weight<'_> {
    /// Output columns.
    pub fn n(&self) -> usize {
        match *self {
            Weight::Rows { n, .. } => n,
            Weight::Packed(p) => p.n,
        }
    }
}

/// `n` rows of `k` values of GGUF blocks in `dtype`, packed for `Simd::Amx`.
pub fn pack(dtype: GgmlDType, data: &[u8], n: usize, k: usize) -> Result<Packed> {
    let f = check(dtype, data, n, k)?;
    Ok(Packed::new(f, data, n, k))
}

/// The format id of `dtype`, after checking that `data` holds `n` rows of `k` values in it.
fn check(dtype: GgmlDType, data: &[u8], n: usize, k: usize) -> Result<u8> {
    let Some(f) = formats::id(dtype) else {
        bail!("no quantized kernel for {dtype:?}");
    };
    let per_block = formats::subs(f) * formats::QK;
    if !k.is_multiple_of(per_block) {
        bail!("quantized matmul: k = {k} must be a multiple of {per_block}");
    }
    if data.len() != n * (k / per_block) * formats::block_bytes(f) {
        bail!("quantized matmul: shapes do not match the data ({n}x{k} weights)");
    }
    Ok(f)
}

/// Several products of one input, outs[i] = x · ws[i]ᵀ: x is quantized once, and the rows of
/// all the weights are shared out between the threads in one go. A layer's q, k and v (and
/// gate and up) then cost one wake-up of the thread pool instead of three (two): at B = 1
/// the products are small and the wake-ups show.
pub fn matmul_many(ws: &[Weight<'_>], k: usize, x: &[f32], outs: &mut [&mut [f32]]) -> Result<()> {
    matmul_many_with(Simd::from_env()?, ws, k, x, outs)
}

/// Below this many multiply-adds (n·k·m) one thread does the whole product: splitting it
/// costs more than it saves. Single-stream decode is where it shows, since there every
/// product is small: at 2^20, smollm2's 576-wide layers all ran on one thread. Decoding 96
/// tokens at B = 1 on a quiet 2-core machine (`conclave ask -t 0 -n 96 --json`), mean tok/s
/// over 2–4 runs, smollm2 / gemma / qwen: 2^20 54 / 33 / 21.4; 2^18 74 / 35 / 23.9;
/// 2^17 69 / 35 / 21.9; 2^16 75 / – / 23.8; 0 (always split) 76 / – / 23.1.
const SERIAL_WORK: usize = 1 << 18;

/// The fewest weight rows a task takes (a group of the packed layout).
const MIN_TASK: usize = 16;

thread_local! {
    /// Quantized activations, reused from call to call on the calling thread.
    static SCRATCH: RefCell<Acts> = RefCell::default();
    /// An MLP's buffers between its products, reused likewise: every value is written
    /// before it is read, so only growth needs zeros (a fresh pair was 96 KiB zeroed a layer
    /// at 8 smollm2 rows).
    static MLP: RefCell<Between> = RefCell::default();
}

/// `matmul` on a given path.
pub fn matmul_with(
    simd: Simd,
    dtype: GgmlDType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    out: &mut [f32],
) -> Result<()> {
    let w = Weight::Rows { dtype, data: w, n };
    matmul_many_with(simd, &[w], k, x, &mut [out])
}

/// `matmul_many` on a given path.
pub fn matmul_many_with(
    simd: Simd,
    ws: &[Weight<'_>],
    k: usize,
    x: &[f32],
    outs: &mut [&mut [f32]],
) -> Result<()> {
    products(simd, ws, k, Input::Values(x), outs, None)
}

/// What a gated MLP makes of its two products, for one row's range of columns:
/// `gate(y, g, u)` writes y = act(g)·u.
pub type Gate<'a> = &'a (dyn Fn(&mut [f32], &[f32], &[f32]) + Sync);

/// A gated MLP, out = gate(x · gᵀ, x · uᵀ) · dᵀ for `ws` = [g, u, d] (g and u with the same n,
/// d with that many columns). Each task makes both products for its columns and gates them
/// at once, while they are in its core's cache; it then quantizes the gated values for d
/// there too. As passes after the products, the gate was serial and read values half of
/// which the other core had written (at 8 smollm2 rows, 15 µs a layer), and so was the
/// quantizing of d's input.
pub fn matmul_mlp(
    ws: [Weight<'_>; 3],
    k: usize,
    x: &[f32],
    gate: Gate<'_>,
    out: &mut [f32],
) -> Result<()> {
    matmul_mlp_with(Simd::from_env()?, ws, k, x, gate, out)
}

/// The values between an MLP's products: both products of the pair, the gated values, and
/// those quantized for the last product.
#[derive(Default)]
struct Between {
    g: Vec<f32>,
    u: Vec<f32>,
    y: Vec<f32>,
    acts: Acts,
}

/// `matmul_mlp` on a given path.
pub fn matmul_mlp_with(
    simd: Simd,
    [g, u, d]: [Weight<'_>; 3],
    k: usize,
    x: &[f32],
    gate: Gate<'_>,
    out: &mut [f32],
) -> Result<()> {
    let n = g.n();
    if u.n() != n || !n.is_multiple_of(formats::QK) {
        bail!("gated matmul: the two weights must have as many rows, a multiple of 32");
    }
    let m = x.len() / k.max(1);
    let mut fresh = Between::default();
    MLP.with(|held| {
        // A nested call on this thread gets buffers of its own, as for `SCRATCH`.
        let mut held = held.try_borrow_mut();
        let b = match held.as_deref_mut() {
            Ok(b) => b,
            Err(_) => &mut fresh,
        };
        for v in [&mut b.g, &mut b.u, &mut b.y] {
            v.resize(m * n, 0.0);
        }
        let next = b.acts.parts(m, n / formats::QK);
        let pair = Pair {
            gate,
            y: Out {
                ptr: b.y.as_mut_ptr(),
                n,
            },
            next: &next,
        };
        let into = &mut [&mut b.g[..], &mut b.u[..]];
        products(simd, &[g, u], k, Input::Values(x), into, Some(pair))?;
        products(simd, &[d], n, Input::Quantized(&b.acts), &mut [out], None)
    })
}

/// What a product multiplies: values it quantizes, or values quantized already.
#[derive(Clone, Copy)]
enum Input<'a> {
    Values(&'a [f32]),
    Quantized(&'a Acts),
}

/// A gated pair's gate, where it writes ([m][n]), and where its tasks quantize what it wrote
/// for the product that follows.
#[derive(Clone, Copy)]
struct Pair<'a> {
    gate: Gate<'a>,
    y: Out,
    next: &'a acts::Parts<'a>,
}

/// The products of `matmul_many_with`, and with `pair` the gated pair of `matmul_mlp_with`
/// (`outs` then holds the two products; `matmul_mlp_with` has checked their shapes).
fn products(
    simd: Simd,
    ws: &[Weight<'_>],
    k: usize,
    input: Input<'_>,
    outs: &mut [&mut [f32]],
    pair: Option<Pair<'_>>,
) -> Result<()> {
    let m = match input {
        Input::Values(x) if k > 0 && x.len().is_multiple_of(k) => x.len() / k,
        Input::Quantized(acts) if acts.blocks * formats::QK == k => acts.rows,
        _ => bail!("quantized matmul: k = {k} must divide x's length"),
    };
    if ws.len() != outs.len() {
        bail!("quantized matmul: one output per weight");
    }
    if !simd.runs_here() {
        bail!("this CPU cannot run the {simd:?} kernels");
    }
    // GGUF rows given to the packing path are packed here, once per call: for tests and
    // benches; a model packs its weights when it loads.
    let mut packed = Vec::new();
    if simd.packs() {
        for w in ws {
            if let Weight::Rows { dtype, data, n } = *w {
                packed.push(pack(dtype, data, n, k)?);
            }
        }
    }
    let mut packed = packed.iter();
    let mut jobs = Vec::with_capacity(ws.len());
    for (w, out) in ws.iter().zip(outs.iter_mut()) {
        let (f, src, n) = match *w {
            Weight::Rows { dtype, data, n } => {
                let f = check(dtype, data, n, k)?;
                match packed.next() {
                    Some(p) => (f, Src::Packed(p), n),
                    None => (f, Src::Rows(data), n),
                }
            }
            Weight::Packed(p) if simd.packs() && p.k == k => (p.f, Src::Packed(p), p.n),
            Weight::Packed(p) => bail!(
                "quantized matmul: packed weights ({}x{}) given to the {simd:?} path with k = {k}",
                p.n,
                p.k
            ),
        };
        if out.len() != m * n {
            bail!("quantized matmul: shapes do not match the data ({n}x{k} weights, {m} rows)");
        }
        let out = Out {
            ptr: out.as_mut_ptr(),
            n,
        };
        jobs.push((f, src, n, out));
    }
    // With a pair, a task is a range of columns of both products, gated once both are made
    // and then quantized for the next product.
    let span = |range: Range<usize>, acts: &Acts, pair: Pair<'_>| {
        let [(f0, w0, n, g), (f1, w1, _, u)] = [jobs[0], jobs[1]];
        let (gate, y) = (pair.gate, pair.y);
        run_rows(simd, f0, w0, range.clone(), acts, g);
        run_rows(simd, f1, w1, range.clone(), acts, u);
        for r in 0..m {
            let (at, len) = (r * n + range.start, range.len());
            // SAFETY: this task alone has these columns of every row, and all three buffers
            // are [m][n].
            unsafe {
                gate(
                    std::slice::from_raw_parts_mut(y.ptr.add(at), len),
                    std::slice::from_raw_parts(g.ptr.add(at), len),
                    std::slice::from_raw_parts(u.ptr.add(at), len),
                );
                // The columns fall on blocks: n is a multiple of 32 (`matmul_mlp_with`), and
                // so is every task's size.
                let blocks = range.start / formats::QK..range.end / formats::QK;
                pair.next
                    .quantize(std::slice::from_raw_parts(y.ptr.add(at), len), r, blocks);
            }
        }
    };
    let run = |acts: &Acts| {
        let threads = rayon::current_num_threads();
        let rows: usize = jobs.iter().map(|j| j.2).sum();
        if rows * k * m < SERIAL_WORK || threads == 1 {
            match pair {
                Some(pair) => span(0..jobs[0].2, acts, pair),
                None => {
                    for &(f, w, n, out) in &jobs {
                        run_rows(simd, f, w, 0..n, acts, out);
                    }
                }
            }
        } else {
            // Guided sizes: each task a 2·threads-th of the rows left, down to one group, so
            // that the tasks that end a job are short and no thread waits long for the last.
            // A pair's tasks cover the columns of both products, in whole blocks, which its
            // tasks quantize (a group of the packed layout divides a block).
            const _: () = assert!(formats::QK.is_multiple_of(pack::GROUP));
            let step = match pair {
                Some(_) => formats::QK,
                None if simd.packs() => pack::GROUP,
                None => 1,
            };
            let (parts, mut left) = match pair {
                Some(_) => (&jobs[..1], jobs[0].2),
                None => (&jobs[..], rows),
            };
            let mut tasks: Vec<(usize, Range<usize>)> = Vec::new();
            for (i, job) in parts.iter().enumerate() {
                let mut start = 0;
                while start < job.2 {
                    let size = (left / (2 * threads)).max(MIN_TASK).next_multiple_of(step);
                    let end = job.2.min(start + size);
                    tasks.push((i, start..end));
                    left -= end - start;
                    start = end;
                }
            }
            let task = |t: usize| {
                let (i, ref range) = tasks[t];
                if let Some(pair) = pair {
                    return span(range.clone(), acts, pair);
                }
                let (f, w, _, out) = jobs[i];
                run_rows(simd, f, w, range.clone(), acts, out);
            };
            if !pool::run(tasks.len(), &task) {
                (0..tasks.len()).into_par_iter().for_each(task);
            }
        }
    };
    let x = match input {
        Input::Quantized(acts) => {
            run(acts);
            return Ok(());
        }
        Input::Values(x) => x,
    };
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut acts) => {
            acts.quantize(x, m, k / formats::QK);
            run(&acts);
        }
        // A nested call on this thread (a rayon worker running another product while it
        // waits) gets buffers of its own.
        Err(_) => {
            let mut acts = Acts::default();
            acts.quantize(x, m, k / formats::QK);
            run(&acts);
        }
    });
    Ok(())
}

/// A job's weights.
#[derive(Clone, Copy)]
enum Src<'a> {
    Rows(&'a [u8]),
    Packed(&'a Packed),
}

fn run_rows(simd: Simd, f: u8, w: Src, rows: Range<usize>, acts: &Acts, out: Out) {
    use formats::{Q4K, Q4_0, Q4_1, Q5_0, Q5_1, Q6K, Q8_0};
    // Each kernel is compiled per format, so its unpacking is inlined and branch-free.
    macro_rules! by_format {
        ($path:ident, $w:ident) => {
            match f {
                Q4_0 => $path::rows::<Q4_0>($w, rows, acts, out),
                Q4_1 => $path::rows::<Q4_1>($w, rows, acts, out),
                Q5_0 => $path::rows::<Q5_0>($w, rows, acts, out),
                Q5_1 => $path::rows::<Q5_1>($w, rows, acts, out),
                Q8_0 => $path::rows::<Q8_0>($w, rows, acts, out),
                Q4K => $path::rows::<Q4K>($w, rows, acts, out),
                Q6K => $path::rows::<Q6K>($w, rows, acts, out),
                _ => unreachable!("format ids come from formats::id"),
            }
        };
    }
    match (simd, w) {
        (Simd::Scalar, Src::Rows(w)) => scalar::rows(f, w, rows, acts, out),
        // SAFETY: `matmul_with` checked that this CPU runs the path, and the shapes.
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx2, Src::Rows(w)) => unsafe { by_format!(avx2, w) },
        #[cfg(target_arch = "x86_64")]
        (Simd::Avx512, Src::Packed(w)) => unsafe { by_format!(vnni, w) },
        #[cfg(target_arch = "x86_64")]
        (Simd::Amx, Src::Packed(w)) => unsafe { by_format!(amx, w) },
        _ => unreachable!("matmul_many_with gives each path the layout it reads"),
    }
}

/// The output, [m][n], shared by the tasks: each writes the columns of its weight rows.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    n: usize,
}

// SAFETY: tasks write disjoint columns, and `matmul_with` outlives them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// # Safety
    /// `row` < m and `col` < n of the output this was made from.
    unsafe fn write(&self, row: usize, col: usize, v: f32) {
        *self.at(row, col) = v;
    }

    /// Where (row, col) lies.
    ///
    /// # Safety
    /// As for `write`.
    unsafe fn at(&self, row: usize, col: usize) -> *mut f32 {
        self.ptr.add(row * self.n + col)
    }
}
