//! How a strategy reaches its decision, and the one function that decides from candidates.
//!
//! A strategy is planned as rounds of answers then a decider, or as rounds of checked answers
//! (see [`plan`]). Only the [`Rule`]s decide from the candidates alone, so only they can be
//! given to [`decide`]: the strategies that need more model calls (judge, fuse, debate's
//! rounds, refine's rounds) are not rules, and cannot reach it. The runner and the bench's
//! sub-sampling both decide through [`decide`].
use super::aggregate::{self, Candidate, Decision, WeightBy};
use super::confidence::{self, Settings};
use super::config::{Ensemble, Strategy};
use super::verify::{self, Verdict};

/// A decision from the candidates alone: no model is asked again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Vote,
    Weighted(WeightBy),
    Medoid,
    /// The largest group of alike candidates that passed their check (see `verify`).
    ExecVote,
    /// The most confident candidates, weighted by confidence (see `confidence`).
    Confidence(Settings),
    /// The candidate with the highest self-certainty.
    Certainty,
}

impl Rule {
    /// The strategy that decides by this rule alone.
    pub fn strategy(self) -> Strategy {
        match self {
            Rule::Vote => Strategy::Vote,
            Rule::Weighted(_) => Strategy::Weighted,
            Rule::Medoid => Strategy::Medoid,
            Rule::ExecVote => Strategy::ExecVote,
            Rule::Confidence(_) => Strategy::Confidence,
            Rule::Certainty => Strategy::Certainty,
        }
    }

    /// Whether the rule reads the candidates' confidence signals.
    pub fn reads_signals(self) -> bool {
        matches!(self, Rule::Confidence(_) | Rule::Certainty)
    }
}

/// What decides after the agents' last round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decider {
    Rule(Rule),
    /// A model picks one candidate.
    Judge,
    /// A model writes a synthesis of the candidates.
    Fuse,
}

/// How an ensemble reaches its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The agents answer `rounds` times, each round after the first seeing the others' last
    /// answers (a debate); then `decider` decides on the last round.
    Answer { rounds: usize, decider: Decider },
    /// The agents answer and a verifier checks them, up to `rounds` times, each round told why
    /// the last one failed, until one passes (refine); then exec-vote decides.
    Check { rounds: usize },
    /// Warm-up agents answer whole and set a confidence bar; the others stop when they fall
    /// under it; `confidence` decides on the rest (`early-stop`).
    EarlyStop(Settings),
    /// The agents answer in rounds until the leader's lead is sure; a vote decides
    /// (`adaptive`).
    Adaptive(Settings),
}

impl Plan {
    /// The rule that decides this plan from one round of stored samples, if one does: what
    /// the bench decides sub-sampled sets of samples by.
    pub fn rule(self) -> Option<Rule> {
        match self {
            Plan::Answer {
                rounds: 1,
                decider: Decider::Rule(r),
            } => Some(r),
            Plan::Check { rounds: 1 } => Some(Rule::ExecVote),
            _ => None,
        }
    }

    /// Times the agents answer at most.
    pub fn rounds(self) -> usize {
        match self {
            Plan::Answer { rounds, .. } | Plan::Check { rounds } => rounds,
            Plan::EarlyStop(_) | Plan::Adaptive(_) => 1,
        }
    }

    /// Whether the agents need their tokens' confidence signals.
    pub fn reads_signals(self) -> bool {
        match self {
            Plan::Answer {
                decider: Decider::Rule(r),
                ..
            } => r.reads_signals(),
            Plan::EarlyStop(_) => true,
            _ => false,
        }
    }
}

/// The plan of `ens`'s strategy.
pub fn plan(ens: &Ensemble) -> Plan {
    let once = |decider| Plan::Answer { rounds: 1, decider };
    match ens.strategy {
        Strategy::Vote => once(Decider::Rule(Rule::Vote)),
        Strategy::Weighted => once(Decider::Rule(Rule::Weighted(ens.weight_by))),
        Strategy::Medoid => once(Decider::Rule(Rule::Medoid)),
        Strategy::Judge => once(Decider::Judge),
        Strategy::Fuse => once(Decider::Fuse),
        Strategy::Debate => Plan::Answer {
            rounds: ens.rounds,
            decider: Decider::Rule(Rule::Vote),
        },
        Strategy::ExecVote => Plan::Check { rounds: 1 },
        Strategy::Refine => Plan::Check { rounds: ens.rounds },
        Strategy::Confidence => once(Decider::Rule(Rule::Confidence(ens.confidence))),
        Strategy::Certainty => once(Decider::Rule(Rule::Certainty)),
        Strategy::EarlyStop => Plan::EarlyStop(ens.confidence),
        Strategy::Adaptive => Plan::Adaptive(ens.confidence),
    }
}

/// What a decision reads besides the rule: the candidates, and what some rules need more.
#[derive(Debug, Clone, Copy)]
pub struct Ballot<'a> {
    pub cands: &'a [Candidate],
    /// Exec-vote: each candidate's check, None where unchecked (missing ones too).
    pub verdicts: &'a [Option<Verdict>],
    /// Medoid: the candidates' pairwise similarities (`aggregate::similarities`) when they
    /// are already known, so that many subsets of one set of replies share one matrix.
    pub similarity: Option<&'a [Vec<f64>]>,
}

impl<'a> Ballot<'a> {
    /// Candidates with nothing more known about them.
    pub fn of(cands: &'a [Candidate]) -> Self {
        Self {
            cands,
            verdicts: &[],
            similarity: None,
        }
    }
}

/// The decision of `rule` over a ballot, with a note for the trace when the rule has one.
pub fn decide(rule: Rule, ballot: Ballot) -> (Decision, Option<String>) {
    let cands = ballot.cands;
    match rule {
        Rule::Vote => (aggregate::vote(cands), None),
        Rule::Weighted(by) => (aggregate::weighted(cands, by), None),
        Rule::Medoid => match ballot.similarity {
            Some(sim) => (aggregate::medoid_with(cands, sim), None),
            None => (aggregate::medoid(cands), None),
        },
        Rule::ExecVote => verify::exec_vote(cands, ballot.verdicts),
        Rule::Confidence(s) => confidence::decide(cands, &s),
        Rule::Certainty => confidence::best_of_n(cands),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_strategy_has_a_plan_and_only_one_round_strategies_a_rule() {
        let ens = |s: &str, rounds: usize| {
            let text = format!(
                "strategy = \"{s}\"\nrounds = {rounds}\nweight_by = \"weight\"\n\
                 [[member]]\nmodel = \"m\""
            );
            Ensemble::from_toml(&text, Path::new(".")).unwrap()
        };
        let rule = |s: &str, rounds: usize| plan(&ens(s, rounds)).rule();
        assert_eq!(rule("vote", 3), Some(Rule::Vote));
        assert_eq!(rule("weighted", 3), Some(Rule::Weighted(WeightBy::Weight)));
        assert_eq!(rule("medoid", 3), Some(Rule::Medoid));
        assert_eq!(rule("exec-vote", 3), Some(Rule::ExecVote));
        assert_eq!(rule("certainty", 3), Some(Rule::Certainty));
        assert_eq!(
            rule("confidence", 1),
            Some(Rule::Confidence(Settings::DEFAULT))
        );
        for s in [
            "judge",
            "fuse",
            "debate",
            "refine",
            "early-stop",
            "adaptive",
        ] {
            assert_eq!(rule(s, 3), None, "{s}");
        }
        // One round of debate is a vote; one of refine, exec-vote.
        assert_eq!(rule("debate", 1), Some(Rule::Vote));
        assert_eq!(rule("refine", 1), Some(Rule::ExecVote));
        assert_eq!(plan(&ens("refine", 3)), Plan::Check { rounds: 3 });
        // A rule's strategy is planned as that rule (these ensembles weigh by `weight`).
        for r in [
            Rule::Vote,
            Rule::Weighted(WeightBy::Weight),
            Rule::Medoid,
            Rule::ExecVote,
        ] {
            assert_eq!(rule(&r.strategy().to_string(), 2), Some(r));
        }
    }

    #[test]
    fn each_rule_decides_as_its_aggregator() {
        let cand = |text: &str, extracted: Option<&str>, lp: f32, weight: f32| Candidate {
            text: text.into(),
            extracted: extracted.map(String::from),
            logprob_mean: lp,
            weight,
            signals: Default::default(),
        };
        // Two say 3 (unsure, light), one says 5 (sure, heavy), one passed its check with 4.
        let cands = [
            cand("it is 3", Some("3"), -2.0, 1.0),
            cand("so 3", Some("3"), -2.0, 1.0),
            cand("5 it is", Some("5"), -0.01, 5.0),
            cand("then 4", Some("4"), -1.0, 1.0),
        ];
        let pass = Verdict {
            passed: true,
            feedback: String::new(),
            behaviour: String::new(),
            status: None,
            seconds: 0.0,
        };
        let verdicts = [None, None, None, Some(pass)];
        let ballot = Ballot {
            cands: &cands,
            verdicts: &verdicts,
            similarity: None,
        };
        let answer = |r| decide(r, ballot).0.answer.unwrap();
        assert_eq!(answer(Rule::Vote), "3");
        assert_eq!(answer(Rule::Weighted(WeightBy::Weight)), "5");
        assert_eq!(answer(Rule::Weighted(WeightBy::Logprob)), "5");
        assert_eq!(answer(Rule::ExecVote), "4");
        assert_eq!(decide(Rule::Medoid, ballot).0, aggregate::medoid(&cands));
        // A given similarity matrix is the one medoid reads.
        let mut sim = aggregate::similarities(&cands);
        sim[2] = vec![1.0; 4];
        sim.iter_mut().for_each(|row| row[2] = 1.0);
        let with = Ballot {
            similarity: Some(&sim),
            ..ballot
        };
        assert_eq!(decide(Rule::Medoid, with).0.winner, Some(2));
    }
}
