//! A run's directory: `run.json` (the settings the samples were made with) and
//! `samples.jsonl` (one record per item and series, appended and flushed as each ends).
//!
//! A rerun with the same directory and settings reads the records back and does not redo
//! them; a rerun with other settings is refused, since its samples would not be comparable.
use crate::ensemble::confidence::Signals;
use crate::ensemble::Verdict;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One generated reply, scored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub model: String,
    pub seed: u64,
    pub text: String,
    /// The answer `ensemble::extract` reads from `text` (for code: the code block).
    pub extracted: Option<String>,
    pub correct: bool,
    pub tokens: usize,
    pub logprob_mean: f32,
    /// The agent's `weight`, for weighted votes.
    pub weight: f32,
    /// The visible check (a code item's docstring examples, a number's arithmetic), which
    /// `exec-vote` decides by; the hidden tests that score `correct` are another matter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    /// Its tokens' confidence signals (DeepConf's and self-certainty), which `confidence` and
    /// `certainty` decide by; none in runs made before they were kept.
    #[serde(default, skip_serializing_if = "Signals::is_empty")]
    pub signals: Signals,
}

/// A sample's result on the verifier a solver may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub passed: bool,
    /// Equal hashes behaved alike on the examples (code only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub behaviour: String,
}

impl From<&Verdict> for Check {
    fn from(v: &Verdict) -> Self {
        Self {
            passed: v.passed,
            behaviour: v.behaviour.clone(),
        }
    }
}

/// An ensemble's own decision at one size (strategies that need a model to decide).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decided {
    pub n: usize,
    pub answer: Option<String>,
    pub correct: bool,
    /// Completion tokens of the whole run, the judge's or the debate's rounds included.
    pub tokens: usize,
    pub seconds: f64,
    /// The agents' (last-round) replies.
    pub samples: Vec<Sample>,
    /// Rounds run, for strategies that go in rounds (debate, refine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<usize>,
    /// Model steps an agent took (agent series only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
}

/// Everything generated for one item by one series.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub series: String,
    /// Position in the dataset (0-based).
    pub index: usize,
    pub id: String,
    /// The normalised gold answer (none for code, which is scored by its tests).
    pub gold: Option<String>,
    /// The stored samples that sizes are sub-sampled from.
    #[serde(default)]
    pub samples: Vec<Sample>,
    /// How many stored samples gave each answer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub votes: BTreeMap<String, usize>,
    /// One decision per size, for strategies decided by a model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decided: Vec<Decided>,
    pub prompt_tokens: usize,
    /// Completion tokens of every sample.
    pub tokens: usize,
    /// Generation wall time for the item.
    pub seconds: f64,
    /// Which invocation of the run (1, 2, …) wrote the record.
    pub run: u32,
    /// Unix time the record was written.
    pub written: f64,
}

/// What the stored samples depend on; a rerun must match it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub task: String,
    pub dataset_sha256: String,
    /// The first item's prompt: a change to the task's instruction shows here.
    pub prompt_sha256: String,
    pub series: Vec<SeriesKey>,
    pub sizes: Vec<usize>,
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub seed: u64,
    /// Tools items asked with their calls under the tool choice's constraint (`--constrain`).
    #[serde(default)]
    pub constrain: bool,
}

/// A series by name and by a digest of its resolved ensemble (agents, seeds, strategy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesKey {
    pub name: String,
    pub digest: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct RunFile {
    settings: Settings,
    /// The dataset file as first given (for people; not compared).
    dataset: String,
    runs: u32,
}

pub struct Store {
    samples: File,
    /// Records already written, by this invocation or earlier ones.
    pub records: Vec<Record>,
    done: HashSet<(String, String)>,
    /// This invocation's number.
    pub run: u32,
}

impl Store {
    /// Opens (or starts) the run in `dir`; refuses one made with other settings.
    pub fn open(dir: &Path, settings: &Settings, dataset: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
        let run_path = dir.join("run.json");
        let samples_path = dir.join("samples.jsonl");
        let records = read_records(&samples_path)?;
        let run = if run_path.exists() {
            let text = std::fs::read_to_string(&run_path)?;
            let old: RunFile = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a run file", run_path.display()))?;
            let recorded: HashSet<&str> = records.iter().map(|r| r.series.as_str()).collect();
            if let Some(diff) = difference(&old.settings, settings, &recorded)? {
                bail!(
                    "{} holds a run with other settings ({diff}); rerun with the same settings \
                     to resume it, or give another --out",
                    dir.display()
                );
            }
            old.runs + 1
        } else if samples_path.exists() {
            bail!(
                "{} has samples.jsonl but no run.json, so its settings are unknown; give another --out",
                dir.display()
            );
        } else {
            1
        };
        let mut done = HashSet::new();
        for r in &records {
            if !done.insert((r.series.clone(), r.id.clone())) {
                bail!(
                    "{}: item `{}` of `{}` is recorded twice; the file was edited by hand?",
                    samples_path.display(),
                    r.id,
                    r.series
                );
            }
        }
        let file = RunFile {
            settings: settings.clone(),
            dataset: dataset.to_string(),
            runs: run,
        };
        write_atomic(&run_path, &serde_json::to_string_pretty(&file)?)?;
        let samples = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&samples_path)
            .with_context(|| format!("cannot open {}", samples_path.display()))?;
        Ok(Self {
            samples,
            records,
            done,
            run,
        })
    }

    pub fn has(&self, series: &str, id: &str) -> bool {
        self.done.contains(&(series.to_string(), id.to_string()))
    }

    /// Appends one record as one line and flushes it, so a killed run loses at most the item
    /// in progress.
    pub fn append(&mut self, record: Record) -> Result<()> {
        let mut line = serde_json::to_string(&record)?;
        line.push('\n');
        self.samples.write_all(line.as_bytes())?;
        self.samples.flush()?;
        self.done.insert((record.series.clone(), record.id.clone()));
        self.records.push(record);
        Ok(())
    }
}

/// Every setting that differs, as "field: was X, now Y; …" (all of them: a seed that changes
/// also changes the series' digests, and the user should see the cause beside the effect).
/// Of the series, only those with samples on record (`recorded`) must come back unchanged:
/// a strategy added to decide on them, or replay them, changes no sample.
fn difference(old: &Settings, new: &Settings, recorded: &HashSet<&str>) -> Result<Option<String>> {
    let (a, b) = (serde_json::to_value(old)?, serde_json::to_value(new)?);
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return Ok(None);
    };
    let mut diffs: Vec<String> = a
        .iter()
        .filter(|(k, v)| *k != "series" && b.get(*k) != Some(v))
        .map(|(k, v)| {
            let now = b.get(k).cloned().unwrap_or_default();
            format!("{k}: was {v}, now {now}")
        })
        .collect();
    for was in old
        .series
        .iter()
        .filter(|s| recorded.contains(s.name.as_str()))
    {
        match new.series.iter().find(|s| s.name == was.name) {
            Some(now) if now.digest == was.digest => {}
            Some(now) => diffs.push(format!(
                "series `{}`: was digest {}, now {}",
                was.name, was.digest, now.digest
            )),
            None => diffs.push(format!(
                "series `{}` has samples here but is not in this run",
                was.name
            )),
        }
    }
    Ok((!diffs.is_empty()).then(|| diffs.join("; ")))
}

/// Reads every record. A last line cut off mid-write (the run was killed) is dropped and
/// cut from the file; any other bad line is an error naming it.
fn read_records(path: &Path) -> Result<Vec<Record>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    let mut records = Vec::new();
    let mut good_len = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if !line.ends_with('\n') {
            tracing::warn!(
                "{}:{}: dropping a record cut off when the run stopped",
                path.display(),
                i + 1
            );
            let f = OpenOptions::new().write(true).open(path)?;
            f.set_len(good_len as u64)?;
            break;
        }
        let r: Record = serde_json::from_str(line.trim_end()).with_context(|| {
            format!(
                "{}:{}: not a sample record; give another --out",
                path.display(),
                i + 1
            )
        })?;
        records.push(r);
        good_len += line.len();
    }
    Ok(records)
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp: PathBuf = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(seed: u64) -> Settings {
        Settings {
            task: "gsm8k".into(),
            dataset_sha256: "abc".into(),
            prompt_sha256: "def".into(),
            series: vec![SeriesKey {
                name: "m".into(),
                digest: "d".into(),
            }],
            sizes: vec![1, 2],
            max_tokens: Some(8),
            temperature: 0.7,
            seed,
            constrain: false,
        }
    }

    fn record(id: &str) -> Record {
        Record {
            series: "m".into(),
            index: 0,
            id: id.into(),
            gold: Some("1".into()),
            samples: Vec::new(),
            votes: BTreeMap::new(),
            decided: Vec::new(),
            prompt_tokens: 3,
            tokens: 0,
            seconds: 0.0,
            run: 1,
            written: 0.0,
        }
    }

    #[test]
    fn records_come_back_and_other_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), &settings(1), "x.jsonl").unwrap();
        assert_eq!(s.run, 1);
        s.append(record("a")).unwrap();
        drop(s);
        let s = Store::open(dir.path(), &settings(1), "x.jsonl").unwrap();
        assert_eq!((s.run, s.records.len()), (2, 1));
        assert!(s.has("m", "a") && !s.has("m", "b"));
        let err = Store::open(dir.path(), &settings(2), "x.jsonl")
            .err()
            .unwrap();
        let err = format!("{err:#}");
        assert!(
            err.contains("seed: was 1, now 2") && err.contains("--out"),
            "{err}"
        );
        // A series added beside the recorded one changes no sample: accepted.
        let mut more = settings(1);
        more.series.push(SeriesKey {
            name: "m · adaptive (replayed)".into(),
            digest: "e".into(),
        });
        let s = Store::open(dir.path(), &more, "x.jsonl").unwrap();
        assert_eq!(s.records.len(), 1);
        drop(s);
        // The recorded one changed, or left out: refused.
        let mut other = settings(1);
        other.series[0].digest = "d2".into();
        let err = format!(
            "{:#}",
            Store::open(dir.path(), &other, "x.jsonl").err().unwrap()
        );
        assert!(err.contains("series `m`: was digest d, now d2"), "{err}");
        other.series[0].name = "n".into();
        let err = format!(
            "{:#}",
            Store::open(dir.path(), &other, "x.jsonl").err().unwrap()
        );
        assert!(err.contains("series `m` has samples here"), "{err}");
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_bad_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), &settings(1), "x.jsonl").unwrap();
        s.append(record("a")).unwrap();
        drop(s);
        let path = dir.path().join("samples.jsonl");
        let whole = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{whole}{{\"series\": \"m\", \"ind")).unwrap();
        let mut s = Store::open(dir.path(), &settings(1), "x.jsonl").unwrap();
        assert_eq!(s.records.len(), 1);
        s.append(record("b")).unwrap();
        let lines = std::fs::read_to_string(&path).unwrap();
        assert_eq!(lines.lines().count(), 2, "{lines}");
        std::fs::write(&path, format!("oops\n{lines}")).unwrap();
        let err = format!(
            "{:#}",
            Store::open(dir.path(), &settings(1), "x.jsonl")
                .err()
                .unwrap()
        );
        assert!(
            err.contains("samples.jsonl:1: not a sample record"),
            "{err}"
        );
    }
}
