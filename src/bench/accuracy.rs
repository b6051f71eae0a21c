//! Accuracy at each ensemble size from the stored samples ("sample once, sub-sample many").
//!
//! For a size n below the number of stored samples K, `trials` random n-subsets of each
//! item's samples are drawn (seeded per item and size) and the ensemble's strategy decides
//! each one; the item's accuracy is the fraction of subsets whose decision is correct. The
//! accuracy at n is the mean over items, with a 95 % interval from the normal approximation
//! over the items' values (mean ± 1.96·s/√m). pass@n (any of the n correct) is exact: the
//! unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on
//! Code", eq. 1), which is the mean over all n-subsets that the trials estimate.
use super::store::{Check, Record, Sample};
use crate::ensemble::aggregate::{self, Candidate};
use crate::ensemble::decide::{decide, Ballot, Plan, Rule};
use crate::ensemble::online;
use crate::ensemble::Verdict;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// The numbers for one size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub n: usize,
    pub accuracy: f64,
    /// Half-width of the 95 % interval; none with fewer than two items.
    pub ci95: Option<f64>,
    /// pass@n: the chance that at least one of n samples is correct.
    pub oracle: f64,
    /// Completion tokens per item (expected over subsets, or measured at that size).
    pub tokens_per_item: f64,
    /// Generation seconds per item, where a run at this size was timed.
    pub seconds_per_item: Option<f64>,
    /// Model steps per item, for an agent series.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_per_item: Option<f64>,
}

/// Whether `rule`'s decision over these samples is correct: the winning candidate's answer
/// is scored (equal answers score alike). `sim`, when given, holds the samples' pairwise
/// similarities (medoid reads them).
pub fn correct(rule: Rule, samples: &[&Sample], sim: Option<&[Vec<f64>]>) -> bool {
    let cands: Vec<Candidate> = samples.iter().map(|s| candidate(s)).collect();
    let verdicts: Vec<Option<Verdict>> = samples
        .iter()
        .map(|s| s.check.as_ref().map(verdict))
        .collect();
    let ballot = Ballot {
        cands: &cands,
        verdicts: &verdicts,
        similarity: sim,
    };
    decide(rule, ballot)
        .0
        .winner
        .is_some_and(|w| samples[w].correct)
}

/// `correct` for the subset `picked` of `all`; `sim` (medoid only) holds the similarities
/// of all of `all`, computed once for every subset.
fn correct_in(rule: Rule, all: &[Sample], picked: &[usize], sim: Option<&[Vec<f64>]>) -> bool {
    let samples: Vec<&Sample> = picked.iter().map(|&i| &all[i]).collect();
    let sub: Option<Vec<Vec<f64>>> = sim.map(|sim| {
        picked
            .iter()
            .map(|&i| picked.iter().map(|&j| sim[i][j]).collect())
            .collect()
    });
    correct(rule, &samples, sub.as_deref())
}

/// A stored check as the verdict `exec_vote` groups by.
fn verdict(c: &Check) -> Verdict {
    Verdict {
        passed: c.passed,
        feedback: String::new(),
        behaviour: c.behaviour.clone(),
        status: None,
        seconds: 0.0,
    }
}

fn candidate(s: &Sample) -> Candidate {
    Candidate {
        text: s.text.clone(),
        extracted: s.extracted.clone(),
        logprob_mean: s.logprob_mean,
        weight: s.weight,
        signals: s.signals.clone(),
    }
}

/// Rows for a series whose decisions are made offline from stored samples.
pub fn subsampled(
    records: &[&Record],
    rule: Rule,
    sizes: &[usize],
    trials: usize,
    seed: u64,
) -> Vec<Row> {
    sizes
        .iter()
        .map(|&n| {
            let mut acc = Vec::new();
            let (mut oracle, mut tokens, mut seconds) = (0.0, 0.0, 0.0);
            for r in records {
                let k = r.samples.len();
                let n = n.min(k);
                let subsets: Vec<Vec<usize>> = if n == k {
                    vec![(0..k).collect()] // every subset is the whole set
                } else {
                    let mut rng = StdRng::seed_from_u64(subset_seed(seed, r.index, n));
                    (0..trials.max(1)).map(|_| subset(k, n, &mut rng)).collect()
                };
                // Medoid's pairwise similarities are the same in every subset: once per item.
                let sim = (rule == Rule::Medoid).then(|| {
                    let all: Vec<Candidate> = r.samples.iter().map(candidate).collect();
                    aggregate::similarities(&all)
                });
                let wins = subsets
                    .iter()
                    .filter(|s| correct_in(rule, &r.samples, s, sim.as_deref()))
                    .count();
                acc.push(wins as f64 / subsets.len() as f64);
                let c = r.samples.iter().filter(|s| s.correct).count();
                oracle += pass_at(k, c, n);
                let sample_tokens: usize = r.samples.iter().map(|s| s.tokens).sum();
                tokens += sample_tokens as f64 * n as f64 / k.max(1) as f64;
                seconds += r.seconds;
            }
            let m = records.len().max(1) as f64;
            let full = records.iter().all(|r| n >= r.samples.len());
            let (accuracy, ci95) = mean_ci(&acc);
            Row {
                n,
                accuracy,
                ci95,
                oracle: oracle / m,
                tokens_per_item: tokens / m,
                // Only the run at the largest size was timed.
                seconds_per_item: full.then_some(seconds / m),
                steps_per_item: None,
            }
        })
        .collect()
}

/// Rows for an online strategy (`plan`: early-stop or adaptive) replayed at each size n on
/// the first n of each item's stored samples, the ones a live run at n draws (same seeds):
/// its decision, and the tokens it would have spent.
pub fn replayed(records: &[&Record], plan: Plan, sizes: &[usize]) -> Vec<Row> {
    sizes
        .iter()
        .map(|&n| {
            let (mut acc, mut oracle, mut tokens) = (Vec::new(), 0.0, 0.0);
            for r in records {
                let drawn = &r.samples[..n.min(r.samples.len())];
                let cands: Vec<Candidate> = drawn.iter().map(candidate).collect();
                let counts: Vec<usize> = drawn.iter().map(|s| s.tokens).collect();
                let got = match plan {
                    Plan::EarlyStop(s) => online::replay_early_stop(cands, &counts, s),
                    Plan::Adaptive(s) => online::replay_adaptive(cands, &counts, s),
                    _ => unreachable!("only early-stop and adaptive are replayed"),
                };
                let won = got.decision.winner.is_some_and(|w| drawn[w].correct);
                acc.push(f64::from(u8::from(won)));
                // A stopped or undrawn sample gave no answer to count.
                let right = got
                    .cands
                    .iter()
                    .zip(drawn)
                    .any(|(c, s)| c.extracted.is_some() && s.correct);
                oracle += f64::from(u8::from(right));
                tokens += got.tokens as f64;
            }
            let m = records.len().max(1) as f64;
            let (accuracy, ci95) = mean_ci(&acc);
            Row {
                n,
                accuracy,
                ci95,
                oracle: oracle / m,
                tokens_per_item: tokens / m,
                seconds_per_item: None,
                steps_per_item: None,
            }
        })
        .collect()
}

/// Rows for a series that ran the ensemble itself at each size (judge, fuse, debate).
pub fn decided(records: &[&Record], sizes: &[usize]) -> Vec<Row> {
    sizes
        .iter()
        .map(|&n| {
            let runs: Vec<_> = records
                .iter()
                .filter_map(|r| r.decided.iter().find(|d| d.n == n))
                .collect();
            let m = runs.len().max(1) as f64;
            let acc: Vec<f64> = runs
                .iter()
                .map(|d| f64::from(u8::from(d.correct)))
                .collect();
            let (accuracy, ci95) = mean_ci(&acc);
            Row {
                n,
                accuracy,
                ci95,
                oracle: runs
                    .iter()
                    .filter(|d| d.samples.iter().any(|s| s.correct))
                    .count() as f64
                    / m,
                tokens_per_item: runs.iter().map(|d| d.tokens as f64).sum::<f64>() / m,
                seconds_per_item: Some(runs.iter().map(|d| d.seconds).sum::<f64>() / m),
                // Agents record their steps; other decided series have none.
                steps_per_item: runs
                    .iter()
                    .map(|d| d.steps)
                    .sum::<Option<usize>>()
                    .filter(|_| !runs.is_empty())
                    .map(|s| s as f64 / m),
            }
        })
        .collect()
}

/// A uniformly random n-subset of 0..k, in ascending order (so a decision's "first seen"
/// tie-break follows the samples' stored order, as it does for the whole set).
pub fn subset(k: usize, n: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut s = rand::seq::index::sample(rng, k, n.min(k)).into_vec();
    s.sort_unstable();
    s
}

/// The subset stream of one item at one size: independent of the other items, so a run
/// resumed or extended gives each item the same subsets.
fn subset_seed(seed: u64, item: usize, n: usize) -> u64 {
    // Odd multipliers from splitmix64 (Steele, Lea & Flood 2014) spread the fields apart.
    seed ^ (item as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (n as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// Mean and 95 % half-width (normal approximation, sample standard deviation).
pub fn mean_ci(values: &[f64]) -> (f64, Option<f64>) {
    let m = values.len();
    if m == 0 {
        return (0.0, None);
    }
    let mean = values.iter().sum::<f64>() / m as f64;
    if m < 2 {
        return (mean, None);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (m - 1) as f64;
    (mean, Some(1.96 * (var / m as f64).sqrt()))
}

/// pass@n from k samples of which c are correct: 1 - C(k-c, n) / C(k, n).
pub fn pass_at(k: usize, c: usize, n: usize) -> f64 {
    if k == 0 {
        return 0.0;
    }
    if k - c < n {
        return 1.0;
    }
    // The product form of the ratio avoids huge binomials (Chen et al. 2021, Fig. 3).
    1.0 - (k - c + 1..=k)
        .map(|i| 1.0 - n as f64 / i as f64)
        .product::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_sorted_distinct_uniform_and_reproducible() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut counts = [0usize; 8];
        for _ in 0..4000 {
            let s = subset(8, 3, &mut rng);
            assert_eq!(s.len(), 3);
            assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
            for i in s {
                counts[i] += 1;
            }
        }
        // Each index is in 3/8 of the subsets: 1500 expected, sd ≈ 31.
        assert!(
            counts.iter().all(|&c| (1350..1650).contains(&c)),
            "{counts:?}"
        );
        let draw = |seed| subset(16, 4, &mut StdRng::seed_from_u64(seed));
        assert_eq!(draw(9), draw(9));
        assert_ne!(subset_seed(1, 0, 2), subset_seed(1, 1, 2));
        assert_ne!(subset_seed(1, 0, 2), subset_seed(1, 0, 4));
        assert_eq!(subset(5, 9, &mut rng), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn ci_is_the_normal_approximation() {
        let (m, ci) = mean_ci(&[1.0, 0.0, 1.0, 0.0]);
        assert_eq!(m, 0.5);
        // s = sqrt(1/3), se = s / 2
        assert!((ci.unwrap() - 1.96 * (1.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-12);
        assert!(mean_ci(&[0.7, 0.7, 0.7]).1.unwrap() < 1e-12);
        assert_eq!(mean_ci(&[0.25]), (0.25, None));
        assert_eq!(mean_ci(&[]), (0.0, None));
    }

    #[test]
    fn pass_at_matches_counting_subsets() {
        assert_eq!(pass_at(4, 0, 2), 0.0);
        assert_eq!(pass_at(4, 3, 2), 1.0);
        assert_eq!(pass_at(4, 1, 4), 1.0);
        // k = 4, c = 1, n = 2: 3 of the 6 pairs hold the correct one.
        assert!((pass_at(4, 1, 2) - 0.5).abs() < 1e-12);
        // k = 5, c = 2, n = 2: 1 - C(3,2)/C(5,2) = 1 - 3/10.
        assert!((pass_at(5, 2, 2) - 0.7).abs() < 1e-12);
        assert!((pass_at(10, 3, 1) - 0.3).abs() < 1e-12);
    }

    fn sample(answer: &str, correct: bool) -> Sample {
        Sample {
            model: "m".into(),
            seed: 0,
            text: answer.into(),
            extracted: Some(answer.into()),
            correct,
            tokens: 10,
            logprob_mean: -0.5,
            weight: 1.0,
            check: None,
            signals: Default::default(),
        }
    }

    #[test]
    fn subsampled_accuracy_uses_the_vote_and_counts_tokens() {
        let rec = Record {
            series: "m".into(),
            index: 0,
            id: "1".into(),
            gold: Some("7".into()),
            samples: vec![
                sample("7", true),
                sample("8", false),
                sample("8", false),
                sample("7", true),
                sample("7", true),
            ],
            votes: Default::default(),
            decided: Vec::new(),
            prompt_tokens: 5,
            tokens: 50,
            seconds: 2.0,
            run: 1,
            written: 0.0,
        };
        let rows = subsampled(&[&rec], Rule::Vote, &[1, 2, 5], 2000, 1);
        // n = 1: a random sample is right 3/5 of the time.
        assert!((rows[0].accuracy - 0.6).abs() < 0.05, "{rows:?}");
        // n = 5: 7 wins 3-2.
        assert_eq!(rows[2].accuracy, 1.0);
        assert_eq!(rows[2].seconds_per_item, Some(2.0));
        assert_eq!(rows[0].seconds_per_item, None);
        assert_eq!(
            (rows[0].tokens_per_item, rows[2].tokens_per_item),
            (10.0, 50.0)
        );
        assert!((rows[1].oracle - pass_at(5, 3, 2)).abs() < 1e-12);
        assert_eq!(rows[0].ci95, None, "one item has no interval");
    }

    #[test]
    fn medoid_on_a_subset_of_the_shared_matrix_decides_as_from_scratch() {
        let texts = [
            ("the answer is 7", true),
            ("so the answer is 8", false),
            ("the answer is 8", false),
            ("", false),
            ("it is 7 so the answer is 7", true),
        ];
        let samples: Vec<Sample> = texts.iter().map(|&(t, c)| sample(t, c)).collect();
        let all: Vec<Candidate> = samples.iter().map(candidate).collect();
        let sim = aggregate::similarities(&all);
        let rule = Rule::Medoid;
        let mut differing = 0;
        for mask in 1u32..(1 << samples.len()) {
            let picked: Vec<usize> = (0..samples.len())
                .filter(|i| mask & (1 << i) != 0)
                .collect();
            let fresh: Vec<&Sample> = picked.iter().map(|&i| &samples[i]).collect();
            let want = correct(rule, &fresh, None);
            assert_eq!(
                correct_in(rule, &samples, &picked, Some(&sim)),
                want,
                "{picked:?}"
            );
            differing += usize::from(want != correct(rule, &fresh[..1], None));
        }
        assert!(differing > 0, "the subsets must not all decide alike");
    }

    #[test]
    fn exec_vote_picks_the_largest_group_that_passed_its_check() {
        let checked = |answer: &str, correct: bool, passed: bool| Sample {
            check: Some(Check {
                passed,
                behaviour: answer.into(),
            }),
            ..sample(answer, correct)
        };
        // Three alike wrong answers fail the visible check; two right ones pass it.
        let samples = [
            checked("a", false, false),
            checked("a", false, false),
            checked("a", false, false),
            checked("b", true, true),
            checked("b", true, true),
        ];
        let all: Vec<&Sample> = samples.iter().collect();
        assert!(!correct(Rule::Vote, &all, None));
        assert!(correct(Rule::ExecVote, &all, None));
        // Unchecked samples are grouped by answer, as a vote would.
        let bare: Vec<Sample> = samples
            .iter()
            .map(|s| Sample {
                check: None,
                ..s.clone()
            })
            .collect();
        assert!(!correct(
            Rule::ExecVote,
            &bare.iter().collect::<Vec<_>>(),
            None
        ));
    }
}
