//! How sure a sample was, read from its tokens' signals ([`crate::engine::Signal`]), and the
//! decisions built on it:
//!
//! * `confidence`: DeepConf offline (Fu et al. 2025, "Deep Think with Confidence", §3.1–3.3):
//!   keep the `keep` % most confident samples by a [`Measure`], then a vote weighted by it.
//! * `certainty`: best-of-N by self-certainty (Kang et al. 2025, "Scalable Best-of-N Selection
//!   for Large Language Models via Self-Certainty"), for any kind of answer.
//! * The bar of `early-stop`, DeepConf online (§3.2), from the warm-up samples: [`bar`].
//! * The stopping rule of `adaptive` (Aggarwal et al. 2023, "Let's Sample Step by Step:
//!   Adaptive-Consistency for Efficient Reasoning and Coding with LLMs", §3): [`leader_holds`].
use super::aggregate::{self, Candidate, Decision, WeightBy};
use crate::engine::Signal;
use serde::{Deserialize, Serialize};

/// Top-k tokens a token's confidence is the mean over: the 20 that vLLM's logprobs give,
/// which DeepConf's implementation reads.
pub const TOP_K: usize = 20;

/// What a sample's tokens said about it, as traces and the bench keep it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    /// Each token's confidence (DeepConf's C_i), rounded to 3 decimals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub confidence: Vec<f32>,
    /// The mean of the tokens' self-certainty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certainty: Option<f32>,
}

impl Signals {
    pub fn of(tokens: &[Signal]) -> Self {
        let round = |x: f32| (x * 1000.0).round() / 1000.0;
        let certainty = (!tokens.is_empty())
            .then(|| tokens.iter().map(|s| s.certainty).sum::<f32>() / tokens.len() as f32);
        Self {
            confidence: tokens.iter().map(|s| round(s.confidence)).collect(),
            certainty: certainty.map(round),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.confidence.is_empty() && self.certainty.is_none()
    }
}

/// How a sample's token confidences make one number (DeepConf §3.1); larger is surer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    /// The mean over all tokens (average trace confidence).
    Mean,
    /// The lowest mean of any `window` consecutive tokens (lowest group confidence).
    Lowest,
    /// The mean of the lowest 10 % of the windows' means (bottom-10 % group confidence).
    #[default]
    Bottom10,
    /// The mean of the last `window` tokens (tail confidence).
    Tail,
}

/// The settings of the confidence strategies (an ensemble file's `[confidence]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// How `confidence` scores a sample.
    #[arg(long = "confidence-measure", value_enum, default_value_t = Self::DEFAULT.measure)]
    pub measure: Measure,
    /// Percent of the samples `confidence` keeps, the most confident (DeepConf's η), and of
    /// the warm-up's confidence that `early-stop` lets later samples fall to.
    #[arg(long = "confidence-keep", default_value_t = Self::DEFAULT.keep)]
    pub keep: u32,
    /// Tokens in a group (DeepConf's sliding window).
    #[arg(long = "confidence-window", default_value_t = Self::DEFAULT.window)]
    pub window: usize,
    /// `early-stop`: samples run whole to set the bar the others must stay over.
    #[arg(long = "warmup", default_value_t = Self::DEFAULT.warmup)]
    pub warmup: usize,
    /// `adaptive`: samples drawn in each round before the stopping rule is asked.
    #[arg(long = "adaptive-batch", default_value_t = Self::DEFAULT.batch)]
    pub batch: usize,
    /// `adaptive`: the chance, in percent, that the leading answer leads the answers' true
    /// distribution, at which sampling stops (Aggarwal et al.'s threshold, 0.95).
    #[arg(long = "adaptive-stop-at", default_value_t = Self::DEFAULT.stop_at)]
    pub stop_at: u32,
}

impl Settings {
    /// DeepConf-high's η = 90 % (the choice that kept accuracy in the paper), a window that
    /// fits this project's replies of a few hundred tokens (the paper's 2048 fits its
    /// thousands), a quarter of 16 samples as warm-up, and Adaptive-Consistency's threshold.
    pub const DEFAULT: Self = Self {
        measure: Measure::Bottom10,
        keep: 90,
        window: 32,
        warmup: 4,
        batch: 4,
        stop_at: 95,
    };

    /// Whether the settings can be used, with what to change when not.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=100).contains(&self.keep),
            "confidence keep = {} is a percent of the samples: give 1 to 100",
            self.keep
        );
        anyhow::ensure!(
            self.window > 0,
            "confidence window must be at least 1 token"
        );
        anyhow::ensure!(self.batch > 0, "adaptive batch must be at least 1 sample");
        anyhow::ensure!(
            (50..100).contains(&self.stop_at),
            "adaptive stop_at = {} is a percent chance: give 50 to 99",
            self.stop_at
        );
        Ok(())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The means of every `window` consecutive values (one mean for fewer values).
fn groups(values: &[f32], window: usize) -> Vec<f64> {
    let w = window.clamp(1, values.len().max(1));
    if values.is_empty() {
        return Vec::new();
    }
    let mut sum: f64 = values[..w].iter().map(|&v| f64::from(v)).sum();
    let mut out = vec![sum / w as f64];
    for i in w..values.len() {
        sum += f64::from(values[i]) - f64::from(values[i - w]);
        out.push(sum / w as f64);
    }
    out
}

/// A sample's confidence by `measure`; None without token confidences.
pub fn score(confidence: &[f32], measure: Measure, window: usize) -> Option<f64> {
    if confidence.is_empty() {
        return None;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Some(match measure {
        Measure::Mean => mean(&groups(confidence, confidence.len())),
        Measure::Lowest => groups(confidence, window)
            .into_iter()
            .fold(f64::INFINITY, f64::min),
        Measure::Bottom10 => {
            let mut g = groups(confidence, window);
            g.sort_by(f64::total_cmp);
            mean(&g[..g.len().div_ceil(10)])
        }
        Measure::Tail => {
            let tail = &confidence[confidence.len().saturating_sub(window)..];
            mean(&groups(tail, tail.len()))
        }
    })
}

/// DeepConf offline: the `keep` % of the answering samples most confident by the measure cast
/// votes weighted by their confidence; the rest cast none. A note says when no sample had
/// signals (then it is a plain vote).
pub fn decide(cands: &[Candidate], s: &Settings) -> (Decision, Option<String>) {
    let scores: Vec<Option<f64>> = cands
        .iter()
        .map(|c| {
            c.extracted.as_ref()?;
            score(&c.signals.confidence, s.measure, s.window)
        })
        .collect();
    let mut ranked: Vec<usize> = (0..cands.len()).filter(|&i| scores[i].is_some()).collect();
    if ranked.is_empty() {
        let note = "no sample had token confidences: decided by vote".to_string();
        return (aggregate::vote(cands), Some(note));
    }
    // Most confident first; equal ones in their order.
    ranked.sort_by(|&a, &b| scores[b].unwrap().total_cmp(&scores[a].unwrap()));
    let kept = (ranked.len() * s.keep as usize).div_ceil(100).max(1);
    ranked.truncate(kept);
    let ballots: Vec<Candidate> = cands
        .iter()
        .enumerate()
        .map(|(i, c)| Candidate {
            extracted: c.extracted.clone().filter(|_| ranked.contains(&i)),
            weight: scores[i].unwrap_or(0.0) as f32,
            ..c.clone()
        })
        .collect();
    (aggregate::weighted(&ballots, WeightBy::Weight), None)
}

/// Self-certainty best-of-N: the answering sample with the highest mean self-certainty wins
/// (the first of equals). Its votes are each answer's best certainty; agreement is the share
/// of answering samples that gave the winner's answer.
pub fn best_of_n(cands: &[Candidate]) -> (Decision, Option<String>) {
    let answering = || {
        cands
            .iter()
            .enumerate()
            .filter(|(_, c)| c.extracted.is_some())
    };
    let best = answering()
        .filter_map(|(i, c)| Some((i, c.signals.certainty?)))
        .fold(None::<(usize, f32)>, |b, (i, x)| match b {
            Some((_, y)) if y >= x => b,
            _ => Some((i, x)),
        });
    let Some((w, _)) = best else {
        let note = "no sample had self-certainty: decided by vote".to_string();
        return (aggregate::vote(cands), Some(note));
    };
    let mut votes = std::collections::BTreeMap::new();
    for (_, c) in answering() {
        let x = f64::from(c.signals.certainty.unwrap_or(f32::NEG_INFINITY));
        let v = votes
            .entry(c.extracted.clone().expect("answering"))
            .or_insert(x);
        *v = f64::max(*v, x);
    }
    let answer = cands[w].extracted.clone();
    let same = answering().filter(|(_, c)| c.extracted == answer).count();
    let decision = Decision {
        winner: Some(w),
        answer,
        votes,
        agreement: same as f64 / answering().count() as f64,
        tie_break: None,
    };
    (decision, None)
}

/// `early-stop`'s bar from the warm-up samples' token confidences: the (100 − keep)th
/// percentile of their lowest group confidences (DeepConf §3.2, eq. 7; nearest rank), so that
/// about `keep` % of samples like them would stay over it. None without signals.
pub fn bar(warmup: &[&[f32]], s: &Settings) -> Option<f32> {
    let mut lowest: Vec<f64> = warmup
        .iter()
        .filter_map(|c| score(c, Measure::Lowest, s.window))
        .collect();
    if lowest.is_empty() {
        return None;
    }
    lowest.sort_by(f64::total_cmp);
    let rank = (lowest.len() * (100 - s.keep as usize)) / 100;
    Some(lowest[rank.min(lowest.len() - 1)] as f32)
}

/// Adaptive-Consistency's Beta stopping rule: with `lead` votes for the leading answer and
/// `second` for the runner-up, the posterior chance that the leader is the more likely of the
/// two, P(p > 1/2) for p ~ Beta(lead + 1, second + 1). Stop once it reaches `stop_at` %.
pub fn leader_holds(lead: usize, second: usize, stop_at: u32) -> (bool, f64) {
    // For whole a, b: P(Beta(a, b) > 1/2) = P(Binomial(a + b − 1, 1/2) ≤ a − 1).
    let n = lead + second + 1;
    let mut term = 0.5f64.powi(n as i32); // C(n, 0) / 2^n
    let mut p = 0.0;
    for k in 0..=lead {
        p += term;
        term *= (n - k) as f64 / (k + 1) as f64;
    }
    (p * 100.0 >= f64::from(stop_at) - 1e-9, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(answer: Option<&str>, confidence: Vec<f32>, certainty: Option<f32>) -> Candidate {
        Candidate {
            text: answer.unwrap_or("").into(),
            extracted: answer.map(String::from),
            logprob_mean: -0.5,
            weight: 1.0,
            signals: Signals {
                confidence,
                certainty,
            },
        }
    }

    #[test]
    fn measures_read_the_windows() {
        let c = [3.0, 3.0, 1.0, 1.0, 3.0, 3.0, 3.0, 2.0];
        let at = |m| score(&c, m, 2).unwrap();
        assert!((at(Measure::Mean) - 19.0 / 8.0).abs() < 1e-9);
        assert_eq!(at(Measure::Lowest), 1.0);
        // Seven windows: 3, 2, 1, 2, 3, 3, 2.5; the lowest 10 % is one of them.
        assert_eq!(at(Measure::Bottom10), 1.0);
        assert_eq!(at(Measure::Tail), 2.5);
        assert_eq!(score(&[], Measure::Mean, 2), None);
        // A window longer than the sample is the whole sample.
        assert_eq!(score(&[1.0, 2.0], Measure::Lowest, 5), Some(1.5));
    }

    #[test]
    fn confidence_keeps_the_surest_and_weighs_them() {
        let sure = vec![5.0; 8];
        let unsure = vec![1.0; 8];
        // Three unsure say 7, two sure say 9: a vote says 7, confidence says 9.
        let cands = [
            cand(Some("7"), unsure.clone(), None),
            cand(Some("7"), unsure.clone(), None),
            cand(Some("7"), unsure.clone(), None),
            cand(Some("9"), sure.clone(), None),
            cand(Some("9"), sure.clone(), None),
            cand(None, sure.clone(), None),
        ];
        assert_eq!(aggregate::vote(&cands).answer.as_deref(), Some("7"));
        let all = Settings {
            keep: 100,
            ..Settings::DEFAULT
        };
        // Weighted alone: 3 × 1 against 2 × 5.
        let (d, note) = decide(&cands, &all);
        assert_eq!((d.answer.as_deref(), note), (Some("9"), None));
        assert_eq!(d.votes["7"], 3.0);
        assert_eq!(d.winner, Some(3));
        // Keeping 40 % of the five answering keeps the two sure ones only.
        let (d, _) = decide(&cands, &Settings { keep: 40, ..all });
        assert_eq!(d.votes.get("7"), None);
        // With heavy unsure ones the filter decides: keep 60 % = 3 of 5.
        let heavy = [
            cand(Some("7"), vec![4.0; 8], None),
            cand(Some("7"), vec![4.0; 8], None),
            cand(Some("7"), vec![4.0; 8], None),
            cand(Some("9"), vec![4.5; 8], None),
            cand(Some("9"), vec![4.5; 8], None),
        ];
        assert_eq!(decide(&heavy, &all).0.answer.as_deref(), Some("7"));
        let (d, _) = decide(&heavy, &Settings { keep: 60, ..all });
        assert_eq!(d.answer.as_deref(), Some("9"));
        // No signals: a vote, and a note.
        let bare = [cand(Some("1"), vec![], None), cand(Some("2"), vec![], None)];
        let (d, note) = decide(&bare, &all);
        assert_eq!((d, note.is_some()), (aggregate::vote(&bare), true));
    }

    #[test]
    fn certainty_picks_the_surest_answering_sample() {
        let cands = [
            cand(Some("a"), vec![], Some(2.0)),
            cand(None, vec![], Some(9.0)),
            cand(Some("b"), vec![], Some(3.5)),
            cand(Some("a"), vec![], Some(3.0)),
        ];
        let (d, note) = best_of_n(&cands);
        assert_eq!(
            (d.winner, d.answer.as_deref(), note),
            (Some(2), Some("b"), None)
        );
        assert_eq!((d.votes["a"], d.votes["b"]), (3.0, 3.5));
        assert!((d.agreement - 1.0 / 3.0).abs() < 1e-12);
        let (d, note) = best_of_n(&[cand(Some("a"), vec![], None)]);
        assert_eq!((d.answer.as_deref(), note.is_some()), (Some("a"), true));
    }

    #[test]
    fn the_bar_is_a_percentile_of_the_warmups_lowest_groups() {
        let w: Vec<Vec<f32>> = vec![
            vec![2.0, 4.0],
            vec![3.0, 3.0],
            vec![1.0, 9.0],
            vec![8.0, 8.0],
        ];
        let refs: Vec<&[f32]> = w.iter().map(Vec::as_slice).collect();
        let s = Settings {
            window: 1,
            ..Settings::DEFAULT
        };
        // Lowest groups 2, 3, 1, 8. Keep 90 %: the lowest of four; keep 50 %: the median's upper.
        assert_eq!(bar(&refs, &s), Some(1.0));
        assert_eq!(bar(&refs, &Settings { keep: 50, ..s }), Some(3.0));
        assert_eq!(bar(&refs, &Settings { keep: 10, ..s }), Some(8.0));
        assert_eq!(bar(&[], &s), None);
    }

    #[test]
    fn the_beta_rule_matches_its_closed_form() {
        // Four to none: P = 1 − 2^-5 = 0.969; three to none: 1 − 2^-4 = 0.9375.
        let (stop, p) = leader_holds(4, 0, 95);
        assert!(stop && (p - 31.0 / 32.0).abs() < 1e-12);
        let (stop, p) = leader_holds(3, 0, 95);
        assert!(!stop && (p - 15.0 / 16.0).abs() < 1e-12);
        // A tie is a coin toss; a bigger lead holds more surely.
        assert!((leader_holds(3, 3, 95).1 - 0.5).abs() < 1e-12);
        assert!(leader_holds(9, 3, 95).1 > leader_holds(6, 3, 95).1);
    }
}
