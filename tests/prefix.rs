//! The engine's prefix cache on real models: a conversation extended by a turn prefills only
//! what is new, and answers exactly as a cold prefill of the whole prompt does, to the bits
//! of its log-probabilities, for greedy and seeded samples, one or four; the server reports
//! the cached tokens as OpenAI does.
mod common;
use conclave::engine::{Engine, Job, Message, Output, Prompt, SamplingParams};
use std::sync::atomic::Ordering;

fn sampling(temperature: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        seed,
        ..Default::default()
    }
}

fn job(model: &str, messages: &[Message], samples: Vec<SamplingParams>) -> Job {
    Job {
        model: model.into(),
        prompt: Prompt::Chat(messages.to_vec()),
        max_tokens: 24,
        stop: vec![],
        samples,
        ignore_eos: false,
        stream: None,
        constraint: None,
    }
}

fn run(engine: &Engine, job: Job) -> Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(engine.generate(job)).unwrap()
}

/// Each sample's tokens and the bits of their log-probability: a cached start computes
/// every position as a cold prefill does (the CPU's attention gives a position the same bits
/// in any chunk), so not even the last bit differs.
fn tokens(o: &Output) -> Vec<(&[u32], u32)> {
    o.completions
        .iter()
        .map(|c| (c.tokens.as_slice(), c.logprob_sum.to_bits()))
        .collect()
}

/// Turn 2 starts from turn 1's prompt and reply, turn 3 from turn 2's; each answers as the same prompt
/// prefilled cold on an engine that caches nothing. Turn 3 draws four samples (greedy and
/// three seeds) from the cached prefix.
fn turns_answer_as_cold_prefills(model: &str) {
    common::model_path(model);
    let warm = Engine::with_default_prefix_cache();
    let cold = Engine::with_prefix_cache(0);
    let mut chat = vec![
        Message::new(
            "system",
            "You are a terse assistant. Answer in one sentence.",
        ),
        Message::new("user", "Name a planet with rings."),
    ];
    let first = run(&warm, job(model, &chat, vec![sampling(0.0, 0)]));
    assert_eq!(first.cached_tokens, 0, "{model}: nothing cached yet");

    chat.push(Message::new("assistant", &first.completions[0].text));
    chat.push(Message::new("user", "And one without rings?"));
    let second = run(&warm, job(model, &chat, vec![sampling(0.0, 0)]));
    // Turn 1's prompt and reply were kept: only the new user turn is prefilled. (The
    // template may end the reply with other tokens than were sampled: a few.)
    let turn1 = first.prompt_tokens + first.completion_tokens();
    assert!(
        second.cached_tokens + 4 >= turn1 && second.cached_tokens < second.prompt_tokens,
        "{model}: turn 2 cached {} of its {} prompt tokens; turn 1 was {turn1}",
        second.cached_tokens,
        second.prompt_tokens
    );
    let second_cold = run(&cold, job(model, &chat, vec![sampling(0.0, 0)]));
    assert_eq!(second_cold.cached_tokens, 0);
    assert_eq!(second_cold.prompt_tokens, second.prompt_tokens);
    assert_eq!(tokens(&second), tokens(&second_cold), "{model}: turn 2");

    chat.push(Message::new("assistant", &second.completions[0].text));
    chat.push(Message::new("user", "Which of the two is larger?"));
    let four = || {
        vec![
            sampling(0.0, 0),
            sampling(0.8, 1),
            sampling(0.8, 2),
            sampling(1.0, 3),
        ]
    };
    let third = run(&warm, job(model, &chat, four()));
    let turn2 = second.prompt_tokens + second.completion_tokens();
    assert!(
        third.cached_tokens + 4 >= turn2 && third.cached_tokens < third.prompt_tokens,
        "{model}: turn 3 cached {} of its {} prompt tokens; turn 2 was {turn2}",
        third.cached_tokens,
        third.prompt_tokens
    );
    let third_cold = run(&cold, job(model, &chat, four()));
    assert_eq!(tokens(&third), tokens(&third_cold), "{model}: turn 3");
    assert_eq!(
        warm.stats().cached_tokens.load(Ordering::SeqCst) as usize,
        second.cached_tokens + third.cached_tokens
    );
    assert_eq!(cold.stats().cached_tokens.load(Ordering::SeqCst), 0);
}

#[test]
fn qwen_turns_answer_as_cold_prefills() {
    turns_answer_as_cold_prefills("qwen2.5-coder-0.5b");
}

/// Prompts that arrive together with one system prompt: each after the first starts from
/// what the one before it left in the store, the shared system prompt at least.
#[test]
fn prompts_arriving_together_share_their_system_prompt() {
    let model = "smollm2-135m";
    common::model_path(model);
    let engine = Engine::with_default_prefix_cache();
    let system = Message::new(
        "system",
        "You are a careful assistant for a harbour office. You answer questions about ships, \
         tides and cargo in one short sentence, and you never make up a number.",
    );
    let asks = [
        "When is high tide?",
        "Which ship is late?",
        "Is crane 2 free?",
    ];
    let jobs = asks.iter().map(|q| {
        let chat = [system.clone(), Message::new("user", q)];
        engine.generate(job(model, &chat, vec![sampling(0.0, 0)]))
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outs = rt.block_on(futures_util::future::join_all(jobs));
    let cached: Vec<usize> = outs
        .iter()
        .map(|o| o.as_ref().unwrap().cached_tokens)
        .collect();
    assert_eq!(cached.iter().filter(|&&c| c == 0).count(), 1, "{cached:?}");
    assert!(
        cached.iter().filter(|&&c| c >= 30).count() == 2,
        "{cached:?}"
    );
}

/// Fixed-length filler prompts measure prefill: the same one twice prefills it twice.
#[test]
fn filler_prompts_are_not_cached() {
    common::model_path("smollm2-135m");
    let engine = Engine::with_default_prefix_cache();
    let filler = Job {
        prompt: Prompt::Filler {
            text: "The lighthouse keeper ".into(),
            tokens: 64,
        },
        max_tokens: 2,
        ..job("smollm2-135m", &[], vec![sampling(0.0, 0)])
    };
    for _ in 0..2 {
        let out = run(&engine, filler.clone());
        assert_eq!((out.prompt_tokens, out.cached_tokens), (64, 0));
    }
}

/// tests/prefix_client.py: the `openai` package reads
/// `usage.prompt_tokens_details.cached_tokens`: none on a first request, the shared prefix
/// on a second that extends it, whole and streamed.
#[test]
fn the_server_reports_cached_prompt_tokens() {
    let url = common::serve(conclave::server::Options {
        models: vec!["smollm2-135m".into()],
        prefix_cache_mb: 512,
        ..Default::default()
    });
    let text = common::run_python("prefix_client.py", &[("CONCLAVE_URL", format!("{url}/v1"))]);
    assert!(text.contains("cached prompt tokens reported"), "{text}");
}
