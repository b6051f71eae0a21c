//! Quantized matmul kernels: GFLOP/s per format, batch size and path, against candle's
//! QMatMul and against dequantize + f32 GEMM (what the forward pass does for large batches).
//!
//! `cargo bench --bench kernels` (about 2 minutes); `-- FILTER` runs a part, e.g.
//! `-- kernel_Avx512/Q4K`. Throughput is counted as 2·n·k·B flops, so criterion's "elem/s" is
//! flop/s. With `CONCLAVE_BENCH_CPU=1` the clock is the process's CPU time (all threads):
//! on a machine busy with other work it shows what a product costs without the waiting.
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use conclave::model::qmatmul::{self, Simd, Weight};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Wall time, or the process's CPU time.
struct Clock {
    cpu: bool,
    epoch: Instant,
    wall: WallTime,
}

impl Clock {
    fn from_env() -> Self {
        Self {
            cpu: std::env::var_os("CONCLAVE_BENCH_CPU").is_some_and(|v| v != "0"),
            epoch: Instant::now(),
            wall: WallTime,
        }
    }

    fn now(&self) -> Duration {
        if !self.cpu {
            return self.epoch.elapsed();
        }
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid timespec to write to.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }
}

impl Measurement for Clock {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        self.now()
    }
    fn end(&self, start: Duration) -> Duration {
        self.now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter()
    }
}

type Group<'a> = BenchmarkGroup<'a, Clock>;

const FORMATS: [GgmlDType; 7] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q6K,
];

const BATCHES: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// (n, k): smollm2's ffn up (576 → 1536) and qwen2.5-0.5b's (896 → 4864); K-quants need k a
/// multiple of 256, so they take the down projections (1536 → 576, 4864 → 896), same work.
fn shapes(dtype: GgmlDType) -> [(usize, usize); 2] {
    match dtype {
        GgmlDType::Q4K | GgmlDType::Q6K => [(576, 1536), (896, 4864)],
        _ => [(1536, 576), (4864, 896)],
    }
}

struct Case {
    q: Arc<QTensor>,
    n: usize,
    k: usize,
}

impl Case {
    fn new(dtype: GgmlDType, n: usize, k: usize) -> Self {
        let t = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let q = Arc::new(QTensor::quantize(&t, dtype).unwrap());
        Self { q, n, k }
    }

    fn name(&self, b: usize) -> String {
        format!("{:?}/{}x{}/B{b}", self.q.dtype(), self.k, self.n)
    }

    fn acts(&self, b: usize) -> Tensor {
        Tensor::randn(0f32, 1.0, (b, self.k), &Device::Cpu).unwrap()
    }

    fn bench_kernel(&self, g: &mut Group<'_>, simd: Simd, b: usize) {
        let x: Vec<f32> = self.acts(b).flatten_all().unwrap().to_vec1().unwrap();
        let (dtype, data) = (self.q.dtype(), self.q.data().unwrap());
        // The packing path reads weights packed once, as a loaded model holds them.
        let packed = simd
            .packs()
            .then(|| qmatmul::pack(dtype, &data, self.n, self.k).unwrap());
        let w = match &packed {
            Some(p) => Weight::Packed(p),
            None => Weight::Rows {
                dtype,
                data: &data,
                n: self.n,
            },
        };
        let mut out = vec![0f32; b * self.n];
        g.throughput(Throughput::Elements((2 * self.n * self.k * b) as u64));
        g.bench_function(self.name(b), |bench| {
            bench.iter(|| {
                qmatmul::matmul_many_with(simd, &[w], self.k, &x, &mut [&mut out]).unwrap()
            })
        });
    }
}

fn group<'a>(c: &'a mut Criterion<Clock>, name: &str) -> Group<'a> {
    let mut g = c.benchmark_group(name);
    // Flat sampling: 10 equal samples, so the slow cases (candle's legacy formats, large
    // batches) take 10 iterations, not 55.
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(50))
        .measurement_time(Duration::from_millis(200));
    g
}

fn bench(c: &mut Criterion<Clock>) {
    let paths = Simd::available();
    // The default path, and the fastest that reads GGUF's blocks as stored (no packing per
    // call where a bench hands it GGUF rows).
    let (fastest, plain) = (
        *paths.last().unwrap(),
        *paths.iter().rfind(|s| !s.packs()).unwrap(),
    );
    let cases: Vec<Case> = FORMATS
        .iter()
        .flat_map(|&d| shapes(d).map(|(n, k)| Case::new(d, n, k)))
        .collect();

    // Our kernel on every SIMD path this CPU runs, at every batch size: AVX2 on GGUF's blocks
    // as stored, AVX-512 and AMX on weights packed at load (the default where they run).
    for simd in paths.iter().copied().filter(|&s| s != Simd::Scalar) {
        let mut g = group(c, &format!("kernel_{simd:?}"));
        for case in &cases {
            for b in BATCHES {
                case.bench_kernel(&mut g, simd, b);
            }
        }
        g.finish();
    }

    // candle's own quantized matmul on the same weights.
    let mut g = group(c, "candle_qmatmul");
    for case in cases.iter() {
        let mm = QMatMul::from_arc(case.q.clone()).unwrap();
        // candle repacks K-quants for AVX-512 VNNI (and AMX from 32 rows): worth the larger
        // batches too; its other formats are far slower and only get B = 1 and 8.
        let k_quant = matches!(case.q.dtype(), GgmlDType::Q4K | GgmlDType::Q6K);
        let batches: &[usize] = if k_quant { &[1, 8, 32, 128] } else { &[1, 8] };
        for &b in batches {
            let x = case.acts(b);
            g.throughput(Throughput::Elements((2 * case.n * case.k * b) as u64));
            g.bench_function(case.name(b), |bench| bench.iter(|| mm.forward(&x).unwrap()));
        }
    }
    g.finish();

    // Dequantize + f32 GEMM, as transformer.rs does from GEMM_MIN_ROWS rows on, against the
    // kernel at larger batches: where the GEMM wins sets the crossover. Formats in the models.
    let mut g = group(c, "crossover");
    let in_models = [
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ];
    for case in cases.iter().filter(|c| in_models.contains(&c.q.dtype())) {
        for b in [32, 64, 128, 256] {
            let x = case.acts(b);
            g.throughput(Throughput::Elements((2 * case.n * case.k * b) as u64));
            g.bench_function(format!("{}/gemm", case.name(b)), |bench| {
                bench.iter(|| {
                    let wf = case.q.dequantize(&Device::Cpu).unwrap();
                    x.matmul(&wf.t().unwrap()).unwrap()
                })
            });
        }
        for b in [128, 256] {
            case.bench_kernel(&mut g, fastest, b);
        }
    }
    g.finish();

    // Products just over qmatmul's serial limit (1 M multiply-adds), split over the pool
    // against one thread. To find the limit again, set SERIAL_WORK to 0 and add smaller ones.
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut g = group(c, "split");
    for (n, k, b) in [(576, 576, 4), (1536, 576, 2), (896, 896, 4), (4864, 896, 1)] {
        let case = Case::new(GgmlDType::Q8_0, n, k);
        let x: Vec<f32> = case.acts(b).flatten_all().unwrap().to_vec1().unwrap();
        let data = case.q.data().unwrap();
        let mut out = vec![0f32; b * n];
        g.throughput(Throughput::Elements((2 * n * k * b) as u64));
        let run = |out: &mut Vec<f32>| {
            qmatmul::matmul_with(plain, GgmlDType::Q8_0, &data, n, k, &x, out).unwrap()
        };
        g.bench_function(format!("{}/pool", case.name(b)), |bench| {
            bench.iter(|| run(&mut out))
        });
        g.bench_function(format!("{}/one_thread", case.name(b)), |bench| {
            bench.iter(|| one.install(|| run(&mut out)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(Clock::from_env());
    targets = bench
}
criterion_main!(benches);
