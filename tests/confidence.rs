//! Confidence on a real model: the engine's per-row stop, `early-stop` and `adaptive`.
mod common;
use conclave::engine::{Engine, Finish, Job, Message, Prompt, SamplingParams, StopBelow};
use conclave::ensemble::config::Quick;
use conclave::ensemble::{AnswerKind, Ensemble, Runner, Strategy, Trace};

const MODEL: &str = "smollm2-135m";

fn sampling(seed: u64, stop_below: Option<StopBelow>) -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        seed,
        confidence_k: Some(20),
        stop_below,
        ..Default::default()
    }
}

#[test]
fn rows_stop_where_their_confidence_falls_under_their_bar() {
    common::model_path(MODEL);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = Engine::start();
        // Rows 1 and 3 must stay over a bar no token reaches: they stop at their first full
        // window. Rows 0 and 2 have no bar and run to max_tokens.
        let never = Some(StopBelow {
            window: 6,
            threshold: 1e6,
        });
        let job = Job {
            model: MODEL.into(),
            prompt: Prompt::Chat(vec![Message::new("user", "Tell me about the sea.")]),
            max_tokens: 40,
            stop: vec![],
            samples: vec![
                sampling(1, None),
                sampling(2, never),
                sampling(3, None),
                sampling(4, never),
            ],
            ignore_eos: true,
            stream: None,
            constraint: None,
        };
        let out = engine.generate(job).await.unwrap();
        let c = &out.completions;
        let tokens: Vec<usize> = c.iter().map(|c| c.tokens.len()).collect();
        assert_eq!(tokens, [40, 6, 40, 6]);
        assert_eq!(c[1].finish, Finish::Unsure);
        assert_eq!(c[0].finish, Finish::Length);
        // Tokens decoded in all: the stopped rows took no steps after their stop.
        assert_eq!(out.decode_tokens + 4, 40 + 6 + 40 + 6, "{out:?}");
        for c in c {
            let s = c.signals.as_ref().expect("signals were asked for");
            assert_eq!(s.len(), c.tokens.len());
            assert!(s.iter().all(|s| s.confidence > 0.0 && s.certainty >= 0.0));
        }
        // A bar the model's own confidence decides. Drawn again with the same seeds, a row
        // under a bar takes the same tokens until its window first falls under it, and stops
        // there; the bar is the median of the free rows' lowest windows, so some stop.
        let job = |stop_below: Option<StopBelow>| Job {
            model: MODEL.into(),
            prompt: Prompt::Chat(vec![Message::new("user", "Tell me about the sea.")]),
            max_tokens: 48,
            stop: vec![],
            samples: (0..6).map(|s| sampling(10 + s, stop_below)).collect(),
            ignore_eos: true,
            stream: None,
            constraint: None,
        };
        let means = |c: &conclave::engine::Completion| -> Vec<f32> {
            let conf: Vec<f32> = c
                .signals
                .as_ref()
                .unwrap()
                .iter()
                .map(|s| s.confidence)
                .collect();
            conf.windows(8)
                .map(|w| w.iter().sum::<f32>() / 8.0)
                .collect()
        };
        let free = engine.generate(job(None)).await.unwrap();
        let mut lowest: Vec<f32> = free
            .completions
            .iter()
            .map(|c| means(c).into_iter().fold(f32::INFINITY, f32::min))
            .collect();
        lowest.sort_by(f32::total_cmp);
        let bar = lowest[3];
        let held = engine
            .generate(job(Some(StopBelow {
                window: 8,
                threshold: bar,
            })))
            .await
            .unwrap();
        let mut stopped = 0;
        for (f, h) in free.completions.iter().zip(&held.completions) {
            match means(f).iter().position(|&m| m < bar) {
                Some(w) => {
                    // Window w covers tokens w..w + 8: the row stops after token w + 8.
                    assert_eq!(h.finish, Finish::Unsure);
                    assert_eq!(h.tokens[..], f.tokens[..w + 8]);
                    stopped += 1;
                }
                None => assert_eq!((h.finish, &h.tokens), (Finish::Length, &f.tokens)),
            }
        }
        assert!((1..6).contains(&stopped), "{stopped} of 6 stopped");
    });
}

fn quick(strategy: Strategy, agents: usize, temperature: f32) -> Ensemble {
    Ensemble::quick(&Quick {
        agents,
        models: vec![MODEL.into()],
        roles: vec!["solver".into()],
        temperatures: vec![temperature],
        strategy,
        answer: AnswerKind::Number,
        max_tokens: 96,
        seed: 7,
    })
    .unwrap()
}

fn run(ens: &Ensemble, question: &str) -> Trace {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        Runner::new(Engine::start())
            .run(ens, question)
            .await
            .unwrap()
    })
}

#[test]
fn adaptive_stops_once_every_sample_agrees() {
    common::model_path(MODEL);
    // Greedy agents all give one answer: after the first round of 4 the leader's 4 to 0
    // holds with P = 31/32 ≥ 95 %, so 12 of the 16 are never drawn.
    let ens = quick(Strategy::Adaptive, 16, 0.0);
    let t = run(&ens, "What is 12 + 30? End with the number.");
    assert_eq!(t.agents.len(), 4, "{:?}", t.notes);
    assert!(t
        .agents
        .iter()
        .all(|a| a.extracted == t.agents[0].extracted));
    let spent: usize = t.agents.iter().map(|a| a.tokens).sum();
    assert_eq!(t.usage.completion_tokens, spent);
    assert!(
        t.notes.iter().any(|n| n.contains("4 of 16")),
        "{:?}",
        t.notes
    );
    // Asking for 99 %: 4 to 0 is not enough (6 to 0 is: 127/128), so two rounds.
    let mut sure = ens.clone();
    sure.confidence.stop_at = 99;
    assert_eq!(
        run(&sure, "What is 12 + 30? End with the number.")
            .agents
            .len(),
        8
    );
}

#[test]
fn early_stop_drops_samples_under_the_warmup_bar() {
    common::model_path(MODEL);
    let mut ens = quick(Strategy::EarlyStop, 12, 1.0);
    // Keep 10 % of the warm-up's confidence: the bar is the most confident warm-up sample's
    // lowest group, which most later samples fall under.
    ens.confidence.keep = 10;
    ens.confidence.window = 8;
    let t = run(
        &ens,
        "Tom has 3 boxes of 7 apples. How many apples? End with the number.",
    );
    assert_eq!(t.agents.len(), 12);
    let stopped: Vec<_> = t
        .agents
        .iter()
        .filter(|a| a.finish == Some(Finish::Unsure))
        .collect();
    assert!(!stopped.is_empty(), "{:?}", t.notes);
    assert!(
        t.agents[..4]
            .iter()
            .all(|a| a.finish != Some(Finish::Unsure)),
        "warm-up samples run whole"
    );
    for a in &stopped {
        assert!(a.tokens < 96 && a.extracted.is_none());
        assert_eq!(a.signals.confidence.len(), a.tokens);
        assert!(!t.votes.is_empty() || t.answer.is_none());
    }
    assert!(
        t.notes.iter().any(|n| n.contains("set the bar")),
        "{:?}",
        t.notes
    );
    // What was decided came from the samples left, and the trace carries what it read.
    let counted: usize = t.agents.iter().filter(|a| a.extracted.is_some()).count();
    assert!(counted <= 12 - stopped.len());
    assert_eq!(
        t.usage.completion_tokens,
        t.agents.iter().map(|a| a.tokens).sum::<usize>()
    );
    // With program answers, a stopped sample's unfinished program is not run; the others'
    // are, and their runs are in the trace.
    ens.set_answer(AnswerKind::Program).unwrap();
    let t = run(
        &ens,
        "Tom has 3 boxes of 7 apples. How many apples? Write a Python program that prints it.",
    );
    let (stopped, whole): (Vec<_>, Vec<_>) = t
        .agents
        .iter()
        .partition(|a| a.finish == Some(Finish::Unsure));
    assert!(!stopped.is_empty(), "{:?}", t.notes);
    assert!(stopped.iter().all(|a| a.program.is_none()));
    assert!(whole.iter().all(|a| a.program.is_some()));
}
