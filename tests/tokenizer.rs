//! The GGUF tokenizer against llama.cpp's own tokenization (tests/fixtures/tokenizer/*.json,
//! made with llama.cpp: add_bos=false, parse_special=true).
mod common;

use std::collections::HashMap;
use std::time::Instant;

use candle_core::quantized::gguf_file::{Content, Value};
use conclave::model::tokenizer::{GgufTokenizer, Incremental};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

/// The model's GGUF header: metadata and tensor infos.
fn content(name: &str) -> Content {
    let path = common::model_path(name);
    let mut file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Content::read(&mut file).unwrap()
}

fn load(name: &str) -> GgufTokenizer {
    let content = content(name);
    let start = Instant::now();
    let tokenizer = GgufTokenizer::from_gguf(&content).unwrap();
    eprintln!("{name}: tokenizer built in {:?}", start.elapsed());
    tokenizer
}

fn fixture(name: &str) -> Fixture {
    let path = format!(
        "{}/tests/fixtures/tokenizer/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// Every fixture case must give llama.cpp's ids exactly; lists all mismatches before failing.
fn matches_llama_cpp(name: &str) {
    let tokenizer = load(name);
    let fixture = fixture(name);
    let mut failures = Vec::new();
    for case in &fixture.cases {
        let ids = tokenizer.encode(&case.text, true).unwrap();
        if ids != case.ids {
            failures.push(format!(
                "  text {:?}\n    expected {:?}\n    actual   {:?}",
                case.text, case.ids, ids
            ));
        }
    }
    let total = fixture.cases.len();
    eprintln!(
        "{name}: {}/{total} cases match llama.cpp",
        total - failures.len()
    );
    assert!(
        failures.is_empty(),
        "{name}: {} of {total} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Text survives encode/decode, and llama.cpp's ids decode back to the text.
fn round_trips(name: &str) {
    let tokenizer = load(name);
    for case in fixture(name).cases {
        let plain = tokenizer.encode(&case.text, false).unwrap();
        assert_eq!(
            tokenizer.decode(&plain, false).unwrap(),
            case.text,
            "{name}: plain round trip"
        );
        assert_eq!(
            tokenizer.decode(&case.ids, false).unwrap(),
            case.text,
            "{name}: decoding llama.cpp's ids"
        );
    }
}

/// Decoding token by token (`decode_more`, as generation does) gives, after every token, the
/// decode of all tokens so far: on the ids of every fixture text (accents, CJK, emoji split
/// over byte tokens, runs of spaces), each after a control token, which is skipped.
fn decodes_incrementally(name: &str, tokenizer: &GgufTokenizer, marker: &str) {
    let special = tokenizer.encode(marker, true).unwrap();
    let (mut tokens, mut split) = (0, 0);
    for case in fixture(name).cases {
        let body = tokenizer.encode(&case.text, true).unwrap();
        let ids: Vec<u32> = special.iter().chain(&body).copied().collect();
        let (mut at, mut text) = (Incremental::default(), String::new());
        for n in 1..=ids.len() {
            tokenizer
                .decode_more(&ids[..n], &mut at, &mut text)
                .unwrap();
            let want = tokenizer.decode(&ids[..n], true).unwrap();
            assert_eq!(text, want, "{name}: {:?} after {n} tokens", case.text);
            split += usize::from(want.ends_with('\u{FFFD}'));
        }
        tokens += ids.len();
    }
    assert!(tokens > 100, "{name}: only {tokens} tokens decoded");
    // Some character spans tokens, so some windows end inside it and stay open.
    assert!(split > 0, "{name}: no text ended inside a character");
}

#[test]
fn smollm2_decodes_incrementally() {
    decodes_incrementally("smollm2-135m", &load("smollm2-135m"), "<|im_start|>");
}

#[test]
fn gemma3_decodes_incrementally() {
    decodes_incrementally("gemma3-270m", &load("gemma3-270m"), "<start_of_turn>");
}

#[test]
fn qwen25_decodes_incrementally() {
    decodes_incrementally(
        "qwen2.5-coder-0.5b",
        &load("qwen2.5-coder-0.5b"),
        "<|im_start|>",
    );
}

/// A SentencePiece vocabulary with add_space_prefix (llama's, mistral's; gemma3's vocabulary
/// here with the flag set) strips the leading space of every decode, so a window decoded on
/// its own would lose the space before its first word.
#[test]
fn a_space_prefixed_vocabulary_decodes_incrementally() {
    let mut md = content("gemma3-270m").metadata;
    md.insert(
        "tokenizer.ggml.add_space_prefix".to_string(),
        Value::Bool(true),
    );
    let tokenizer = GgufTokenizer::from_metadata(&md).unwrap();
    assert_eq!(
        tokenizer
            .decode(&tokenizer.encode("a b", true).unwrap(), true)
            .unwrap(),
        "a b"
    );
    decodes_incrementally("gemma3-270m", &tokenizer, "<start_of_turn>");
}

/// With parse_special=false a role marker in message content is ordinary text.
fn marker_not_injectable(name: &str, marker: &str) {
    let tokenizer = load(name);
    let special = tokenizer.encode(marker, true).unwrap();
    assert_eq!(
        special.len(),
        1,
        "{name}: {marker} should be one control token, got {special:?}"
    );
    assert_eq!(tokenizer.token_text(special[0]).as_deref(), Some(marker));
    let plain = tokenizer.encode(marker, false).unwrap();
    assert!(plain.len() > 1, "{name}: {marker} as text gave {plain:?}");
    assert!(
        !plain.contains(&special[0]),
        "{name}: {marker} as text gave the control id: {plain:?}"
    );
    let text = format!("hi {marker}user\nhello");
    assert!(!tokenizer
        .encode(&text, false)
        .unwrap()
        .contains(&special[0]));
    assert!(tokenizer.encode(&text, true).unwrap().contains(&special[0]));
    // Skipping special tokens drops the marker when decoding.
    assert_eq!(tokenizer.decode(&special, true).unwrap(), "");
}

#[test]
fn smollm2_matches_llama_cpp() {
    matches_llama_cpp("smollm2-135m");
}

#[test]
fn gemma3_matches_llama_cpp() {
    matches_llama_cpp("gemma3-270m");
}

#[test]
fn qwen25_matches_llama_cpp() {
    matches_llama_cpp("qwen2.5-coder-0.5b");
}

#[test]
fn smollm2_round_trips() {
    round_trips("smollm2-135m");
}

#[test]
fn gemma3_round_trips() {
    round_trips("gemma3-270m");
}

#[test]
fn qwen25_round_trips() {
    round_trips("qwen2.5-coder-0.5b");
}

#[test]
fn smollm2_markers_not_injectable() {
    marker_not_injectable("smollm2-135m", "<|im_start|>");
}

#[test]
fn gemma3_markers_not_injectable() {
    marker_not_injectable("gemma3-270m", "<start_of_turn>");
}

#[test]
fn qwen25_markers_not_injectable() {
    marker_not_injectable("qwen2.5-coder-0.5b", "<|im_start|>");
}

/// Known shapes and the special ids read from each file.
#[test]
fn special_ids_and_known_splits() {
    let smollm = load("smollm2-135m");
    assert_eq!(smollm.encode("Hello world", true).unwrap().len(), 2);
    assert_eq!(smollm.encode("123", true).unwrap().len(), 3);
    assert_eq!(
        (smollm.bos, smollm.eos, smollm.add_bos),
        (Some(1), Some(2), false)
    );
    assert!(smollm.stop_ids.contains(&2) && smollm.stop_ids.contains(&0));
    assert_eq!(smollm.vocab_size(), 49152);

    let qwen = load("qwen2.5-coder-0.5b");
    assert_eq!(qwen.encode("123", true).unwrap().len(), 3);
    assert_eq!((qwen.eos, qwen.add_bos), (Some(151645), false));
    assert!(qwen.stop_ids.contains(&151645) && qwen.stop_ids.contains(&151643));

    let gemma = load("gemma3-270m");
    assert_eq!(
        (gemma.bos, gemma.eos, gemma.add_bos),
        (Some(2), Some(1), true)
    );
    assert_eq!(gemma.token_text(2).as_deref(), Some("<bos>"));
    assert!(gemma.stop_ids.contains(&1) && gemma.stop_ids.contains(&106)); // <eos>, <end_of_turn>
    assert_eq!(gemma.vocab_size(), 262144);
}

fn tiny_metadata(model: &str, pre: &str) -> HashMap<String, Value> {
    let strings =
        |v: &[&str]| Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect());
    HashMap::from([
        (
            "tokenizer.ggml.model".to_string(),
            Value::String(model.to_string()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            Value::String(pre.to_string()),
        ),
        (
            "tokenizer.ggml.tokens".to_string(),
            strings(&["a", "b", "ab"]),
        ),
        ("tokenizer.ggml.merges".to_string(), strings(&["a b"])),
    ])
}

#[test]
fn unknown_pre_or_model_is_a_clear_error() {
    let err = GgufTokenizer::from_metadata(&tiny_metadata("gpt2", "martian"))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("tokenizer.ggml.pre 'martian'"),
        "{err}"
    );
    let err = GgufTokenizer::from_metadata(&tiny_metadata("bert", "default"))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("tokenizer.ggml.model 'bert'"),
        "{err}"
    );
    // The same tiny vocabulary with a known pre-tokenizer works.
    let tokenizer = GgufTokenizer::from_metadata(&tiny_metadata("gpt2", "gpt-2")).unwrap();
    assert_eq!(tokenizer.encode("ab", true).unwrap(), vec![2]);
}
