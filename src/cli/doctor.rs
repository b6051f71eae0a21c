//! `conclave doctor`: what this machine offers — sandbox isolation, Python, models, and the
//! kernel path the quantized matmul runs.
use crate::model::qmatmul::Simd;
use crate::store::catalog::models_dir;
use crate::store::fetch::status;
use crate::tools::isolation;
use anyhow::Result;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DoctorArgs) -> Result<()> {
    let iso = isolation();
    let models: Vec<_> = status()
        .into_iter()
        .map(|(e, path)| json!({"name": e.name, "path": path}))
        .collect();
    // What the kernels run: qmatmul's own choice (CONCLAVE_SIMD, CONCLAVE_NO_SIMD, the CPU).
    let chosen = Simd::from_env().map(name).map_err(|e| format!("{e:#}"));
    let available: Vec<String> = Simd::available().into_iter().map(name).collect();
    if args.json {
        let sandbox = match &iso {
            Ok(i) => json!({"isolation": i.label(), "python": i.python, "cgroup": i.cgroup,
                            "layers": i.layers}),
            Err(e) => json!({"error": format!("{e:#}")}),
        };
        let v = json!({"sandbox": sandbox, "models_dir": models_dir(), "models": models,
                       "kernel_path": chosen.as_ref().map_or_else(|e| json!({"error": e}), |p| json!(p)),
                       "kernel_paths_available": available});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match &iso {
        Ok(i) => {
            println!("sandbox isolation: {}", i.label());
            println!("sandbox python:    {}", i.python.display());
            for l in &i.layers {
                let mark = if l.active { "yes" } else { "no " };
                let note = if l.note.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", l.note)
                };
                println!("  {mark} {:<12}{note}", l.name);
            }
        }
        Err(e) => println!("sandbox: unavailable: {e:#}"),
    }
    println!("models dir:        {}", models_dir().display());
    for m in &models {
        let path = m["path"].as_str().unwrap_or("not pulled");
        println!("  {:<20} {path}", m["name"].as_str().unwrap_or(""));
    }
    match &chosen {
        Ok(path) => println!("kernel path:       {path}"),
        Err(e) => println!("kernel path:       none: {e}"),
    }
    println!("kernel paths here: {}", available.join(" "));
    Ok(())
}

/// A kernel path as `CONCLAVE_SIMD` names it; `avx512` is AVX-512 with VNNI.
fn name(simd: Simd) -> String {
    format!("{simd:?}").to_lowercase()
}
