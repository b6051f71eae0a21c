//! Combining several agents' answers into one decision.
//!
//! * [`vote`] / [`weighted`]: majority (plain or weighted) over extracted answers, the
//!   "sampling-and-voting" of Li et al. 2024, "More Agents Is All You Need".
//! * [`medoid`]: for open-ended text, where answers never match exactly, the same paper
//!   picks the reply most similar to all others; similarity here is ROUGE-L F1
//!   (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries").
//! * [`parse_pick`]: reads a judge model's choice among numbered candidates.
//!
//! Every rule is deterministic: ties go to the answer whose supporters have the higher
//! mean token log-prob (the models were more confident in it), then to the answer seen
//! first, so a run can be reproduced from its candidates alone.

use super::confidence::Signals;
use std::collections::BTreeMap;

/// One agent's answer as the aggregator sees it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    /// The full reply.
    pub text: String,
    /// The normalised answer (see `extract`), None when the reply gave none.
    pub extracted: Option<String>,
    /// Mean log-probability of the reply's generated tokens (≤ 0).
    pub logprob_mean: f32,
    /// A per-agent weight for [`WeightBy::Weight`] (e.g. model size or past accuracy).
    pub weight: f32,
    /// The reply's confidence signals, when its strategy asked for them.
    #[serde(default, skip_serializing_if = "Signals::is_empty")]
    pub signals: Signals,
}

/// The outcome of aggregation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// Index of a candidate that carries the winning answer (the first such).
    pub winner: Option<usize>,
    /// The winning extracted answer (or the winner's trimmed text for [`medoid`]).
    pub answer: Option<String>,
    /// Answer -> total vote (count or weight); for [`medoid`], "#i" -> similarity sum.
    pub votes: BTreeMap<String, f64>,
    /// Winning vote / total vote of candidates with an answer (0 if none).
    pub agreement: f64,
    /// A short note when a tie was broken, e.g. "tie 2-2 broken by mean log-prob".
    pub tie_break: Option<String>,
}

impl Decision {
    fn none() -> Self {
        Decision {
            winner: None,
            answer: None,
            votes: BTreeMap::new(),
            agreement: 0.0,
            tie_break: None,
        }
    }
}

/// What one vote counts in [`weighted`] (`weight_by` in an ensemble file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightBy {
    /// `exp(logprob_mean)`: the geometric-mean token probability, in (0, 1].
    #[default]
    Logprob,
    /// The candidate's `weight` field.
    Weight,
}

/// Relative tolerance under which two float scores count as tied (sums of the same
/// weights in a different order differ in the last bits).
const EPS: f64 = 1e-9;

fn tied(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= EPS * a.abs().max(b.abs()).max(1.0)
}

/// Log-probs as comparable f64: NaN (a missing score) sorts last, and values are capped
/// at 0 because a log-probability cannot be positive.
fn lp(c: &Candidate) -> f64 {
    if c.logprob_mean.is_nan() {
        f64::NEG_INFINITY
    } else {
        f64::from(c.logprob_mean).min(0.0)
    }
}

/// "2" for whole counts, "1.250" for weights: keeps tie notes short.
fn fmt_vote(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

/// Majority vote over `extracted`; a candidate without an answer never votes.
pub fn vote(cands: &[Candidate]) -> Decision {
    tally(cands, |_| 1.0)
}

/// Weighted vote over `extracted`, with the same tie-breaks as [`vote`].
///
/// [`WeightBy::Logprob`] counts each vote as `exp(logprob_mean)`, the geometric mean of
/// the reply's token probabilities: unlike the raw log-prob it is positive (so it can be
/// summed as a vote) and, being a per-token mean, it does not punish long replies the way
/// a total sequence probability would. Non-finite or negative weights count as 0.
pub fn weighted(cands: &[Candidate], by: WeightBy) -> Decision {
    match by {
        WeightBy::Logprob => tally(cands, |c| lp(c).exp()),
        WeightBy::Weight => tally(cands, |c| {
            let w = f64::from(c.weight);
            if w.is_finite() && w > 0.0 {
                w
            } else {
                0.0
            }
        }),
    }
}

/// Per-answer running totals, in first-seen order.
struct Tally {
    answer: String,
    vote: f64,
    lp_sum: f64,
    count: usize,
    first: usize,
}

impl Tally {
    fn mean_lp(&self) -> f64 {
        self.lp_sum / self.count as f64
    }
}

fn tally(cands: &[Candidate], weight: impl Fn(&Candidate) -> f64) -> Decision {
    let mut tallies: Vec<Tally> = Vec::new();
    for (i, c) in cands.iter().enumerate() {
        let Some(ans) = &c.extracted else { continue };
        let t = match tallies.iter().position(|t| &t.answer == ans) {
            Some(k) => &mut tallies[k],
            None => {
                tallies.push(Tally {
                    answer: ans.clone(),
                    vote: 0.0,
                    lp_sum: 0.0,
                    count: 0,
                    first: i,
                });
                tallies.last_mut().expect("just pushed")
            }
        };
        t.vote += weight(c);
        t.lp_sum += lp(c);
        t.count += 1;
    }
    let Some(max) = tallies.iter().map(|t| t.vote).reduce(f64::max) else {
        return Decision::none();
    };
    // Tied leaders stay in first-seen order, so `find` below prefers the earliest.
    let leaders: Vec<&Tally> = tallies.iter().filter(|t| tied(t.vote, max)).collect();
    let mut tie_break = None;
    let best = if leaders.len() == 1 {
        leaders[0]
    } else {
        let best_lp = leaders
            .iter()
            .map(|t| t.mean_lp())
            .fold(f64::NEG_INFINITY, f64::max);
        let top: Vec<&Tally> = leaders
            .iter()
            .copied()
            .filter(|t| tied(t.mean_lp(), best_lp))
            .collect();
        let how = if top.len() == 1 {
            "mean log-prob"
        } else {
            "first seen"
        };
        let score = vec![fmt_vote(max); leaders.len()].join("-");
        tie_break = Some(format!("tie {score} broken by {how}"));
        top[0]
    };
    let total: f64 = tallies.iter().map(|t| t.vote).sum();
    Decision {
        winner: Some(best.first),
        answer: Some(best.answer.clone()),
        agreement: if total > 0.0 { best.vote / total } else { 0.0 },
        votes: tallies.iter().map(|t| (t.answer.clone(), t.vote)).collect(),
        tie_break,
    }
}

/// Lowercase word tokens, split on whitespace and punctuation.
fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// ROUGE-L F1 (β = 1) between two token sequences: with LCS length `l`,
/// P = l/|a|, R = l/|b| and F1 = 2PR/(P+R) = 2l/(|a|+|b|), which is symmetric.
fn rouge_l(a: &[String], b: &[String]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    // Classic LCS dynamic programme, one row at a time: O(|a|·|b|) time, O(|b|) memory.
    let mut prev = vec![0usize; b.len() + 1];
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            row[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(row[j])
            };
        }
        std::mem::swap(&mut prev, &mut row);
    }
    let lcs = prev[b.len()] as f64;
    2.0 * lcs / (a.len() + b.len()) as f64
}

/// The most central reply: the candidate with the highest summed ROUGE-L F1 to all
/// others. Ties go to the higher `logprob_mean`, then the earlier candidate.
///
/// Replies with no words are skipped unless all are empty; then the pick falls to the
/// tie-break and `answer` is None (there is no text to give).
pub fn medoid(cands: &[Candidate]) -> Decision {
    medoid_with(cands, &similarities(cands))
}

/// ROUGE-L F1 between every two replies: `sim[i][j]`, 1 on the diagonal of a non-empty one.
pub fn similarities(cands: &[Candidate]) -> Vec<Vec<f64>> {
    let toks: Vec<Vec<String>> = cands.iter().map(|c| tokens(&c.text)).collect();
    let n = cands.len();
    let mut sim = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in i..n {
            let s = rouge_l(&toks[i], &toks[j]);
            sim[i][j] = s;
            sim[j][i] = s;
        }
    }
    sim
}

/// `medoid` with the similarities already computed (`similarities`), so that many subsets
/// of one set of replies reuse one matrix.
pub fn medoid_with(cands: &[Candidate], sim: &[Vec<f64>]) -> Decision {
    // A reply with no words is 0 to itself, any other 1: the diagonal says which are empty.
    let mut pool: Vec<usize> = (0..cands.len()).filter(|&i| sim[i][i] > 0.0).collect();
    if pool.is_empty() {
        pool = (0..cands.len()).collect();
    }
    if pool.is_empty() {
        return Decision::none();
    }
    let sums: Vec<f64> = pool
        .iter()
        .map(|&i| {
            let others = pool.iter().filter(|&&j| j != i);
            others.map(|&j| sim[i][j]).sum()
        })
        .collect();
    let max = sums.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // Positions in `pool` of the tied leaders, in candidate order.
    let leaders: Vec<usize> = (0..pool.len()).filter(|&k| tied(sums[k], max)).collect();
    let mut tie_break = None;
    let best = if leaders.len() == 1 {
        leaders[0]
    } else {
        let best_lp = leaders
            .iter()
            .map(|&k| lp(&cands[pool[k]]))
            .fold(f64::NEG_INFINITY, f64::max);
        let top: Vec<usize> = leaders
            .iter()
            .copied()
            .filter(|&k| tied(lp(&cands[pool[k]]), best_lp))
            .collect();
        let how = if top.len() == 1 {
            "log-prob"
        } else {
            "first seen"
        };
        tie_break = Some(format!(
            "tie on similarity among {} broken by {how}",
            leaders.len()
        ));
        top[0]
    };
    let winner = pool[best];
    let text = cands[winner].text.trim();
    Decision {
        winner: Some(winner),
        answer: (!text.is_empty()).then(|| text.to_string()),
        votes: pool
            .iter()
            .zip(&sums)
            .map(|(i, s)| (format!("#{i}"), *s))
            .collect(),
        agreement: if pool.len() == 1 {
            1.0
        } else {
            sums[best] / (pool.len() - 1) as f64
        },
        tie_break,
    }
}

/// Which of `n` numbered candidates (1..=n) a judge's reply picks, as a 0-based index.
///
/// Three tiers, strongest first; within the strongest tier present, the last in-range
/// mention wins (judges tend to reason first and conclude last):
/// 1. explicit: "Response 2", "answer: 3", "Candidate #1", "option 4", "[[2]]";
/// 2. formatted: "**2**", "#2", "(2)", "[2]";
/// 3. a bare number not glued to a word ("2", but not "gpt4" or "2nd").
///
/// Numbers outside 1..=n are ignored, as if absent.
pub fn parse_pick(text: &str, n: usize) -> Option<usize> {
    const WORDS: [&str; 4] = ["response", "answer", "candidate", "option"];
    let lower = text.to_ascii_lowercase();
    let b = lower.as_bytes();
    let mut best: Option<(u8, usize, usize)> = None; // (tier, position, pick)
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let end = i;
        let Ok(k) = lower[start..end].parse::<usize>() else {
            continue;
        };
        if k == 0 || k > n {
            continue;
        }
        let before = &lower[..start];
        let after = &lower[end..];
        // Explicit: a keyword (as a whole word) then only spaces, "#", ":" or "*".
        let head = before.trim_end_matches([' ', '#', ':', '*']);
        let keyword = WORDS.iter().any(|w| {
            head.strip_suffix(w)
                .is_some_and(|h| !h.ends_with(|c: char| c.is_ascii_alphanumeric()))
        });
        let wrapped = |l: &str, r: &str| before.ends_with(l) && after.starts_with(r);
        let glued = before.ends_with(|c: char| c.is_ascii_alphanumeric())
            || after.starts_with(|c: char| c.is_ascii_alphanumeric());
        let tier = if keyword || wrapped("[[", "]]") {
            2
        } else if wrapped("**", "**")
            || before.ends_with('#')
            || wrapped("(", ")")
            || wrapped("[", "]")
        {
            1
        } else if !glued {
            0
        } else {
            continue;
        };
        best = best.max(Some((tier, start, k - 1)));
    }
    best.map(|(_, _, pick)| pick)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(extracted: Option<&str>, logprob_mean: f32, weight: f32) -> Candidate {
        Candidate {
            text: extracted.unwrap_or("").to_string(),
            extracted: extracted.map(String::from),
            logprob_mean,
            weight,
            signals: Default::default(),
        }
    }
    fn text(t: &str, logprob_mean: f32) -> Candidate {
        Candidate {
            text: t.to_string(),
            extracted: None,
            logprob_mean,
            weight: 1.0,
            signals: Default::default(),
        }
    }

    #[test]
    fn majority_wins() {
        let c = [
            cand(Some("7"), -0.1, 1.0),
            cand(Some("8"), -0.2, 1.0),
            cand(None, -0.1, 1.0),
            cand(Some("8"), -0.9, 1.0),
        ];
        let d = vote(&c);
        assert_eq!(d.winner, Some(1));
        assert_eq!(d.answer.as_deref(), Some("8"));
        assert_eq!(
            d.votes,
            BTreeMap::from([("7".into(), 1.0), ("8".into(), 2.0)])
        );
        assert!((d.agreement - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(d.tie_break, None);
    }

    #[test]
    fn normalised_numbers_vote_together() {
        use crate::ensemble::extract::{extract, AnswerKind};
        let replies = ["#### 1,000", "The answer is 1000.0", "\\boxed{999}"];
        let c: Vec<Candidate> = replies
            .iter()
            .map(|t| Candidate {
                text: t.to_string(),
                extracted: extract(AnswerKind::Number, t),
                logprob_mean: -0.5,
                weight: 1.0,
                signals: Default::default(),
            })
            .collect();
        let d = vote(&c);
        assert_eq!(d.answer.as_deref(), Some("1000"));
        assert_eq!(d.winner, Some(0));
        assert_eq!(d.votes["1000"], 2.0);
    }

    #[test]
    fn tie_broken_by_logprob() {
        // 2-2 tie; "B" supporters are more confident on average (-0.2 vs -0.5).
        let c = [
            cand(Some("A"), -0.4, 1.0),
            cand(Some("B"), -0.1, 1.0),
            cand(Some("A"), -0.6, 1.0),
            cand(Some("B"), -0.3, 1.0),
        ];
        let d = vote(&c);
        assert_eq!(d.answer.as_deref(), Some("B"));
        assert_eq!(d.winner, Some(1));
        assert_eq!(d.agreement, 0.5);
        assert_eq!(
            d.tie_break.as_deref(),
            Some("tie 2-2 broken by mean log-prob")
        );
    }

    #[test]
    fn tie_broken_by_first_seen() {
        // Same votes and same mean log-prob: the answer seen first wins.
        let c = [
            cand(Some("B"), -0.5, 1.0),
            cand(Some("A"), -0.5, 1.0),
            cand(Some("C"), -0.5, 1.0),
        ];
        let d = vote(&c);
        assert_eq!(d.answer.as_deref(), Some("B"));
        assert_eq!(d.winner, Some(0));
        assert_eq!(
            d.tie_break.as_deref(),
            Some("tie 1-1-1 broken by first seen")
        );
    }

    #[test]
    fn all_none_and_empty() {
        let c = [cand(None, -0.1, 1.0), cand(None, -0.2, 1.0)];
        for d in [vote(&c), vote(&[]), weighted(&c, WeightBy::Weight)] {
            assert_eq!(d.winner, None);
            assert_eq!(d.answer, None);
            assert!(d.votes.is_empty());
            assert_eq!(d.agreement, 0.0);
            assert_eq!(d.tie_break, None);
        }
    }

    #[test]
    fn weighted_minority_wins() {
        let c = [
            cand(Some("3"), -0.1, 1.0),
            cand(Some("3"), -0.1, 1.0),
            cand(Some("5"), -0.1, 3.0),
        ];
        assert_eq!(vote(&c).answer.as_deref(), Some("3"));
        let d = weighted(&c, WeightBy::Weight);
        assert_eq!(d.answer.as_deref(), Some("5"));
        assert_eq!(d.winner, Some(2));
        assert_eq!(d.votes["3"], 2.0);
        assert_eq!(d.votes["5"], 3.0);
        assert!((d.agreement - 0.6).abs() < 1e-6);
    }

    #[test]
    fn weighted_by_logprob() {
        // One confident reply (p = e^-0.01) outweighs two unsure ones (e^-2 each).
        let c = [
            cand(Some("x"), -2.0, 1.0),
            cand(Some("y"), -0.01, 1.0),
            cand(Some("x"), -2.0, 1.0),
        ];
        let d = weighted(&c, WeightBy::Logprob);
        assert_eq!(d.answer.as_deref(), Some("y"));
        assert_eq!(d.winner, Some(1));
        assert!((d.votes["x"] - 2.0 * (-2.0f64).exp()).abs() < 1e-6);
        // A weighted tie still follows the log-prob then first-seen rules.
        let c = [cand(Some("p"), -1.0, 0.5), cand(Some("q"), -1.0, 0.5)];
        let d = weighted(&c, WeightBy::Weight);
        assert_eq!(d.answer.as_deref(), Some("p"));
        assert_eq!(
            d.tie_break.as_deref(),
            Some("tie 0.500-0.500 broken by first seen")
        );
        // Bad weights count as zero rather than poisoning the sum.
        let c = [cand(Some("p"), -1.0, f32::NAN), cand(Some("q"), -1.0, 1.0)];
        assert_eq!(weighted(&c, WeightBy::Weight).answer.as_deref(), Some("q"));
    }

    #[test]
    fn rouge_l_values() {
        let t = |s: &str| tokens(s);
        assert_eq!(t("The cat, sat!"), ["the", "cat", "sat"]);
        assert_eq!(rouge_l(&t("a b c d"), &t("a b c d")), 1.0);
        // LCS("a b c d", "a c e") = "a c" = 2 → 2·2/(4+3).
        assert!((rouge_l(&t("a b c d"), &t("a c e")) - 4.0 / 7.0).abs() < 1e-12);
        assert_eq!(rouge_l(&t("x y"), &t("p q")), 0.0);
        assert_eq!(rouge_l(&t(""), &t("p q")), 0.0);
    }

    #[test]
    fn medoid_picks_central_text() {
        let c = [
            text("The sky is blue because of Rayleigh scattering.", -0.5),
            text("Rayleigh scattering makes the sky look blue.", -0.5),
            text(
                "The sky is blue because air scatters blue light more (Rayleigh scattering).",
                -0.5,
            ),
            text("Bananas are yellow.", -0.1),
        ];
        let d = medoid(&c);
        assert_eq!(d.winner, Some(0));
        assert_eq!(
            d.answer.as_deref(),
            Some("The sky is blue because of Rayleigh scattering.")
        );
        assert_eq!(d.votes.len(), 4);
        assert!(d.votes["#0"] > d.votes["#2"] && d.votes["#2"] > d.votes["#3"]);
        assert!((d.agreement - d.votes["#0"] / 3.0).abs() < 1e-12);
        assert_eq!(d.tie_break, None);
    }

    #[test]
    fn medoid_ties_and_edges() {
        // Two identical pairs: all four sums equal; the higher log-prob wins.
        let c = [
            text("a b", -0.9),
            text("c d", -0.3),
            text("a b", -0.8),
            text("c d", -0.2),
        ];
        let d = medoid(&c);
        assert_eq!(d.winner, Some(3));
        assert_eq!(
            d.tie_break.as_deref(),
            Some("tie on similarity among 4 broken by log-prob")
        );
        let c = [text("a b", -0.5), text("c d", -0.5)];
        let d = medoid(&c);
        assert_eq!(d.winner, Some(0));
        assert_eq!(
            d.tie_break.as_deref(),
            Some("tie on similarity among 2 broken by first seen")
        );
        // Empty replies are skipped; a lone survivor fully agrees with itself.
        let c = [text("  ", -0.1), text(" Paris ", -0.5), text("", -0.1)];
        let d = medoid(&c);
        assert_eq!(d.winner, Some(1));
        assert_eq!(d.answer.as_deref(), Some("Paris"));
        assert_eq!(d.votes, BTreeMap::from([("#1".into(), 0.0)]));
        assert_eq!(d.agreement, 1.0);
        // All empty: a pick by log-prob, but no answer to give.
        let c = [text("", -0.5), text(" ", -0.1)];
        let d = medoid(&c);
        assert_eq!(d.winner, Some(1));
        assert_eq!(d.answer, None);
        assert_eq!(medoid(&[]), Decision::none());
    }

    #[test]
    fn parse_pick_cases() {
        assert_eq!(parse_pick("Answer 3", 4), Some(2));
        assert_eq!(
            parse_pick("The most consistent response is Response 2.", 3),
            Some(1)
        );
        assert_eq!(parse_pick("**2**", 3), Some(1));
        assert_eq!(parse_pick("My verdict: [[2]]", 3), Some(1));
        assert_eq!(parse_pick("#2", 3), Some(1));
        assert_eq!(parse_pick("Candidate 2", 3), Some(1));
        assert_eq!(parse_pick("I choose option #3.", 3), Some(2));
        assert_eq!(parse_pick("Best answer: 1", 3), Some(0));
        assert_eq!(parse_pick("3", 3), Some(2));
        // Explicit beats bare, even when the bare number comes later.
        assert_eq!(parse_pick("Response 1 is best, it has 2 steps", 3), Some(0));
        // Last explicit mention wins.
        assert_eq!(
            parse_pick("Response 1 looks fine, but Response 3 is better.", 3),
            Some(2)
        );
        // Out-of-range numbers are ignored, falling back to what remains.
        assert_eq!(parse_pick("Response 7", 3), None);
        assert_eq!(parse_pick("Response 7, so 2", 3), Some(1));
        assert_eq!(parse_pick("Response 0", 3), None);
        // Numbers glued to words are not picks.
        assert_eq!(parse_pick("gpt3 says the 2nd", 3), None);
        assert_eq!(parse_pick("They all look the same to me.", 3), None);
        assert_eq!(parse_pick("", 3), None);
        assert_eq!(parse_pick("Response 1", 0), None);
    }
}
