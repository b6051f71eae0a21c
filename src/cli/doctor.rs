//! `conclave doctor`: what this machine offers — sandbox isolation, Python, models, CPU.
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
    let cpu = cpu_features();
    let no_simd = std::env::var_os("CONCLAVE_NO_SIMD").is_some();
    if args.json {
        let sandbox = match &iso {
            Ok(i) => json!({"isolation": i.label(), "python": i.python, "cgroup": i.cgroup,
                            "layers": i.layers}),
            Err(e) => json!({"error": format!("{e:#}")}),
        };
        let v = json!({"sandbox": sandbox, "models_dir": models_dir(), "models": models,
                       "cpu_features": cpu, "conclave_no_simd": no_simd});
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
    println!(
        "cpu features:      {}{}",
        cpu.join(" "),
        if no_simd {
            " (CONCLAVE_NO_SIMD set: scalar kernels)"
        } else {
            ""
        }
    );
    Ok(())
}

/// The x86 features the quantized kernels can use (they need AVX2 and FMA together).
fn cpu_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("avx2", is_x86_feature_detected!("avx2")),
            ("fma", is_x86_feature_detected!("fma")),
            ("avx512f", is_x86_feature_detected!("avx512f")),
        ] {
            if on {
                out.push(name);
            }
        }
    }
    out
}
