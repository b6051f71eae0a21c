//! `conclave bench-merge`: the series of several finished runs in one summary and one set of
//! plots, for runs that cannot be one invocation (a program-answer series beside prose ones,
//! live strategies at fewer sizes or on fewer items than the stored-sample ones).
use super::plot;
use super::report::Summary;
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};

/// Reads each run's `summary.json`, puts their series side by side (a name seen before gets
/// its run's number), and writes the summary and plots into `out`. Returns the summary and
/// whether the plots have text.
pub fn merge(runs: &[PathBuf], out: &Path) -> Result<(Summary, bool)> {
    ensure!(
        !runs.is_empty(),
        "give the --out directories of finished bench runs to merge"
    );
    let mut merged: Option<Summary> = None;
    for (k, dir) in runs.iter().enumerate() {
        let path = dir.join("summary.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: give the --out directory of a finished `conclave bench` run",
                path.display()
            )
        })?;
        let s: Summary = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a bench summary", path.display()))?;
        let Some(m) = &mut merged else {
            merged = Some(s);
            continue;
        };
        ensure!(
            m.task == s.task,
            "{} is a `{}` run and the first a `{}` run: merge runs of one task",
            dir.display(),
            s.task,
            m.task
        );
        if m.dataset != s.dataset {
            m.dataset = format!("{}; {}", m.dataset, s.dataset);
        }
        m.items = m.items.max(s.items);
        for mut series in s.series {
            if m.series.iter().any(|x| x.name == series.name) {
                series.name = format!("{} (run {})", series.name, k + 1);
            }
            m.series.push(series);
        }
    }
    let summary = merged.expect("at least one run");
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    summary.write(out)?;
    let text = plot::draw(&summary, out)?;
    Ok((summary, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::accuracy::Row;
    use crate::bench::report::SeriesSummary;

    fn run(dir: &Path, task: &str, names: &[&str], items: usize) {
        let row = |n: usize| Row {
            n,
            accuracy: 0.5,
            ci95: Some(0.1),
            oracle: 0.6,
            tokens_per_item: 100.0 * n as f64,
            seconds_per_item: None,
            steps_per_item: None,
        };
        let series = names
            .iter()
            .map(|&name| SeriesSummary {
                name: name.into(),
                strategy: "vote".into(),
                method: "sub-sampled".into(),
                samples: 4,
                items,
                completion_tokens: 400,
                wall_seconds: 1.0,
                tokens_per_s: 400.0,
                rows: vec![row(1), row(4)],
            })
            .collect();
        let s = Summary {
            task: task.into(),
            dataset: format!("{task}.jsonl"),
            items,
            trials: 10,
            seed: 0,
            interval: "x".into(),
            series,
        };
        std::fs::create_dir_all(dir).unwrap();
        s.write(dir).unwrap();
    }

    #[test]
    fn runs_are_put_side_by_side_and_other_tasks_refused() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, c) = (d.path().join("a"), d.path().join("b"), d.path().join("c"));
        run(&a, "gsm8k", &["m · vote", "m · certainty"], 20);
        run(&b, "gsm8k", &["m · vote", "m · early-stop"], 10);
        run(&c, "code", &["m · vote"], 10);
        let out = d.path().join("out");
        let (s, _) = merge(&[a.clone(), b.clone()], &out).unwrap();
        let names: Vec<&str> = s.series.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "m · vote",
                "m · certainty",
                "m · vote (run 2)",
                "m · early-stop"
            ]
        );
        assert_eq!((s.items, s.series[3].items), (20, 10));
        for f in [
            "summary.json",
            "summary.md",
            "accuracy_vs_tokens.svg",
            "cost_vs_n.png",
        ] {
            assert!(out.join(f).is_file(), "{f}");
        }
        let err = merge(&[a, c], &out).unwrap_err().to_string();
        assert!(err.contains("merge runs of one task"), "{err}");
        let err = format!("{:#}", merge(&[d.path().join("none")], &out).unwrap_err());
        assert!(err.contains("finished `conclave bench` run"), "{err}");
    }
}
