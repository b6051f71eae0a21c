//! The summary of a run: a table per series, as `summary.json`, `summary.md` and on stdout.
use super::accuracy::Row;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeriesSummary {
    pub name: String,
    pub strategy: String,
    /// "sub-sampled" (from `samples` stored samples) or "run at each size".
    pub method: String,
    pub samples: usize,
    pub items: usize,
    /// Completion tokens generated for the series, over all invocations.
    pub completion_tokens: usize,
    /// Generation wall time for the series, over all invocations.
    pub wall_seconds: f64,
    pub tokens_per_s: f64,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub task: String,
    pub dataset: String,
    pub items: usize,
    pub trials: usize,
    pub seed: u64,
    pub interval: String,
    pub series: Vec<SeriesSummary>,
}

/// The interval's method, as stated in every summary.
pub const INTERVAL: &str = "95% normal approximation over items (mean ± 1.96·s/√items)";

impl Summary {
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join("summary.json"), json + "\n")
            .with_context(|| format!("cannot write {}", dir.join("summary.json").display()))?;
        std::fs::write(dir.join("summary.md"), self.markdown())?;
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Benchmark: {} on {}\n\n{} items; {} trials per size; seed {}; interval: {}.\n\
             pass@N is the chance that at least one of N samples is correct.\n",
            self.task, self.dataset, self.items, self.trials, self.seed, self.interval
        );
        for series in &self.series {
            s.push('\n');
            s.push_str(&series.table());
        }
        s
    }
}

impl SeriesSummary {
    /// A markdown table: it reads as well on a terminal as in a file.
    pub fn table(&self) -> String {
        let stored = if self.samples > 0 {
            format!(", {} samples each", self.samples)
        } else {
            String::new()
        };
        // Agents take steps; their tables say how many per item.
        let steps = self.rows.iter().any(|r| r.steps_per_item.is_some());
        let (steps_head, steps_rule) = if steps {
            (" steps/item |", "---:|")
        } else {
            ("", "")
        };
        let mut s = format!(
            "## {} ({}, {}; {} items{stored})\n\n\
             | N | accuracy | ± 95% | pass@N | tokens/item |{steps_head} s/item |\n\
             |---:|---:|---:|---:|---:|{steps_rule}---:|\n",
            self.name, self.strategy, self.method, self.items
        );
        for r in &self.rows {
            let ci = r.ci95.map_or("–".into(), |c| format!("{c:.3}"));
            let secs = r.seconds_per_item.map_or("–".into(), |x| format!("{x:.1}"));
            let step = match (steps, r.steps_per_item) {
                (false, _) => String::new(),
                (true, x) => format!(" {} |", x.map_or("–".into(), |x| format!("{x:.1}"))),
            };
            let _ = writeln!(
                s,
                "| {} | {:.3} | {ci} | {:.3} | {:.0} |{step} {secs} |",
                r.n, r.accuracy, r.oracle, r.tokens_per_item
            );
        }
        let _ = writeln!(
            s,
            "\n{} completion tokens in {:.1} s of generation ({:.1} tokens/s).",
            self.completion_tokens, self.wall_seconds, self.tokens_per_s
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(steps: Option<f64>) -> SeriesSummary {
        SeriesSummary {
            name: "s".into(),
            strategy: "vote".into(),
            method: "run at each size".into(),
            samples: 0,
            items: 2,
            completion_tokens: 300,
            wall_seconds: 3.0,
            tokens_per_s: 100.0,
            rows: vec![Row {
                n: 1,
                accuracy: 0.5,
                ci95: None,
                oracle: 0.5,
                tokens_per_item: 150.0,
                seconds_per_item: Some(1.5),
                steps_per_item: steps,
            }],
        }
    }

    #[test]
    fn agent_tables_add_steps_per_item() {
        let agent = series(Some(2.5)).table();
        assert!(
            agent.contains("| tokens/item | steps/item | s/item |"),
            "{agent}"
        );
        assert!(agent.contains("| 150 | 2.5 | 1.5 |"), "{agent}");
        let plain = series(None).table();
        assert!(!plain.contains("steps"), "{plain}");
        assert!(plain.contains("| 150 | 1.5 |"), "{plain}");
    }
}
