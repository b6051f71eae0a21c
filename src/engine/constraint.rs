//! Grammar-constrained decoding: a JSON Schema, regex or Lark grammar masks each row's logits
//! before sampling and advances with each sampled token, through `llguidance` (the library
//! behind llama.cpp's, vLLM's and mistral.rs's structured outputs).
//!
//! llguidance walks a trie of every token's bytes ([`Vocab`], built once per model from our
//! GGUF tokenizer, so no second tokenizer is loaded). A job's grammar is compiled once
//! ([`Compiled`]); each row then gets its own parser ([`RowConstraint`]), a deep copy, so rows
//! computing masks on different threads share no lock.
//!
//! Special tokens: a token our decoder skips (control, end-of-generation, FIM) is a special
//! token to llguidance, named in Lark as `<|im_end|>` or by id as `<[151645]>`; it adds no
//! text. User-defined tokens such as Qwen's `<tool_call>` (151657) are text: our decode keeps
//! "<tool_call>", a lazy trigger on that string sees it, and a Lark string literal
//! "<tool_call>" matches the single token as well as the same text spelt in pieces.
use super::error::JobError;
use crate::model::tokenizer::TokenBytes;
use crate::model::Model;
use anyhow::{Context, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A language the output must belong to.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object.
    JsonObject,
    JsonSchema(serde_json::Value),
    /// A regular expression the whole text matches (Rust `regex` syntax).
    Regex(String),
    /// llguidance's Lark dialect (docs/syntax.md there), which may embed `%json{...}`.
    Lark(String),
}

/// What constrains a job's completions; every row of the job follows it on its own.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// The whole completion follows the grammar.
    Full(Grammar),
    /// Free text until the completion's text ends with one of the triggers; from there that
    /// trigger's grammar constrains the rest (llama.cpp's "lazy grammars"). The text is
    /// looked at after each token, so a trigger must end where a token does: a one-token
    /// trigger such as Qwen's "<tool_call>" always does, while "```json" followed in the same
    /// token by more text is missed.
    Lazy(Vec<(String, Grammar)>),
}

impl Grammar {
    fn top_level(&self) -> TopLevelGrammar {
        match self {
            Grammar::JsonObject => json(serde_json::json!({"type": "object"})),
            Grammar::JsonSchema(schema) => json(schema.clone()),
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Grammar::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        }
    }
}

/// Whitespace JSON may have between tokens: a space, or a line break or two and an indent of
/// up to 20 (llama.cpp's `space` rule, common/json-schema-to-grammar.cpp). llguidance's
/// default allows any run of whitespace, where a small model can loop on newlines until it
/// runs out of tokens and leaves the JSON unfinished.
const JSON_SPACE: &str = r"[ ]|\n{1,2}[ \t]{0,20}";

/// A schema's grammar, with [`JSON_SPACE`] unless the schema sets its own `x-guidance`.
fn json(mut schema: serde_json::Value) -> TopLevelGrammar {
    if schema == serde_json::Value::Bool(true) {
        schema = serde_json::json!({});
    }
    if let Some(o) = schema.as_object() {
        if !o.contains_key("x-guidance") {
            let options = JsonCompileOptions {
                whitespace_pattern: Some(JSON_SPACE.into()),
                ..Default::default()
            };
            options.apply_to(&mut schema);
        }
    }
    TopLevelGrammar::from_json_schema(schema)
}

/// The command line's constraint (`ask`, `bench-speed`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GrammarArgs {
    /// Constrain the output to the JSON Schema in FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "grammar")]
    pub json_schema: Option<PathBuf>,
    /// Constrain the output to the grammar in FILE: llguidance's Lark dialect, or a regular
    /// expression for the whole output when FILE's name ends in `.regex`.
    #[arg(long, value_name = "FILE")]
    pub grammar: Option<PathBuf>,
}

impl GrammarArgs {
    /// The constraint the files give (None when neither is set).
    pub fn constraint(&self) -> Result<Option<Constraint>> {
        let read = |path: &Path, what: &str| {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the {what} in {}", path.display()))
        };
        let grammar = if let Some(path) = &self.json_schema {
            let text = read(path, "JSON Schema")?;
            let schema = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not JSON: a JSON Schema file holds one JSON object",
                    path.display()
                )
            })?;
            Grammar::JsonSchema(schema)
        } else if let Some(path) = &self.grammar {
            let text = read(path, "grammar")?;
            if path.extension().is_some_and(|e| e == "regex") {
                // An editor's final newline is not part of the expression.
                Grammar::Regex(text.strip_suffix('\n').unwrap_or(&text).to_string())
            } else {
                Grammar::Lark(text)
            }
        } else {
            return Ok(None);
        };
        Ok(Some(Constraint::Full(grammar)))
    }

    /// `e`, naming the file when it is the grammar that does not compile.
    pub fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        let file = self.json_schema.as_ref().or(self.grammar.as_ref());
        match (file, e.downcast_ref::<JobError>()) {
            (Some(f), Some(JobError::BadGrammar(_))) => e.context(format!("{}", f.display())),
            _ => e,
        }
    }
}

/// A model's tokens as llguidance sees them: built once per model (a trie over up to 262144
/// tokens), shared by every job on it.
pub(crate) struct Vocab {
    factory: ParserFactory,
}

/// The token trie, with our tokenizer's own encoding for the strings a grammar forces.
struct Env {
    trie: TokTrie,
    /// Our tokenizer, with control tokens written as text encoded as text.
    encoder: tokenizers::Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Invalid UTF-8 (a forced prefix cut inside a character) falls back to the trie.
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.encoder
                .encode_fast(text, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        })
    }
}

impl Vocab {
    pub fn new(model: &Model) -> Result<Self> {
        let tokenizer = &model.tokenizer;
        // The logits row can be longer than the vocabulary (padding rows of the embedding);
        // those ids get names no grammar matches.
        let n = model.vocab_size().max(tokenizer.vocab_size());
        let mut words: Vec<Vec<u8>> = tokenizer
            .token_bytes()
            .into_iter()
            .map(|t| match t {
                TokenBytes::Text(bytes) => bytes,
                TokenBytes::Special(name) => special(&name),
            })
            .collect();
        for id in words.len()..n {
            words.push(special(&format!("<[pad {id}]>")));
        }
        let stops = &tokenizer.stop_ids;
        let eos = tokenizer
            .eos
            .or(stops.first().copied())
            .unwrap_or(TokTrie::SPECIAL_TOKEN_MARKER as u32);
        let info = TokRxInfo {
            vocab_size: n as u32,
            tok_eos: eos,
            tok_bos: tokenizer.bos,
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: None,
        };
        // Any end-of-generation token may end a grammar that is complete.
        let mut eos_ids = vec![eos];
        eos_ids.extend(stops.iter().filter(|&&s| s != eos));
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos_ids);
        // Text a grammar forces is encoded as our tokenizer would, control tokens as text.
        let mut encoder = tokenizer.inner().clone();
        encoder.set_encode_special_tokens(true);
        let env: TokEnv = Arc::new(Env { trie, encoder });
        let mut factory = ParserFactory::new_simple(&env)?;
        // Grammar diagnostics come back as errors; nothing goes to stderr.
        factory.quiet();
        Ok(Self { factory })
    }

    /// Compiles `constraint` for one job; a grammar that does not compile is
    /// [`JobError::BadGrammar`].
    pub fn compile(&self, constraint: &Constraint) -> Result<Arc<Compiled>, JobError> {
        let matcher = |g: &Grammar| -> Result<Matcher, JobError> {
            let parser = self
                .factory
                .create_parser(g.top_level())
                .map_err(|e| JobError::BadGrammar(format!("{e:#}")))?;
            let m = Matcher::new(Ok(parser));
            match m.get_error() {
                Some(e) => Err(JobError::BadGrammar(e)),
                None => Ok(m),
            }
        };
        Ok(Arc::new(match constraint {
            Constraint::Full(g) => Compiled::Full(Box::new(matcher(g)?)),
            Constraint::Lazy(triggers) => Compiled::Lazy(
                triggers
                    .iter()
                    .map(|(t, g)| Ok((t.clone(), matcher(g)?)))
                    .collect::<Result<_, JobError>>()?,
            ),
        }))
    }
}

/// A special token's trie entry: the marker byte, then its name.
fn special(name: &str) -> Vec<u8> {
    let mut bytes = vec![TokTrie::SPECIAL_TOKEN_MARKER];
    bytes.extend_from_slice(name.as_bytes());
    bytes
}

/// A job's constraint, compiled: each row starts from a copy.
pub(crate) enum Compiled {
    Full(Box<Matcher>),
    Lazy(Vec<(String, Matcher)>),
}

/// Why a row cannot go on under its constraint.
#[derive(Debug)]
pub(crate) struct DeadEnd;

/// One row's parser state.
pub(crate) struct RowConstraint {
    job: Arc<Compiled>,
    /// The grammar in force; None while a lazy row is free.
    active: Option<Matcher>,
}

impl RowConstraint {
    pub fn new(job: Arc<Compiled>) -> Self {
        let active = match &*job {
            Compiled::Full(m) => Some(m.deep_clone()),
            Compiled::Lazy(_) => None,
        };
        Self { job, active }
    }

    /// Writes `logits` into `out` with the tokens the grammar does not allow at −∞; false
    /// (and nothing written) while the row is free. Err when no token is allowed.
    pub fn mask(&mut self, logits: &[f32], out: &mut Vec<f32>) -> Result<bool, DeadEnd> {
        let Some(m) = &mut self.active else {
            return Ok(false);
        };
        let allowed = m.compute_mask().map_err(|e| {
            tracing::debug!("constraint dead end: {e:#}");
            DeadEnd
        })?;
        if allowed.is_zero() {
            return Err(DeadEnd);
        }
        apply(&allowed, logits, out);
        Ok(true)
    }

    /// Advances the grammar by `token`; true when the grammar is complete (the row ends).
    pub fn take(&mut self, token: u32) -> Result<bool, DeadEnd> {
        let Some(m) = &mut self.active else {
            return Ok(false);
        };
        m.consume_token(token).map_err(|e| {
            tracing::debug!("constraint rejected token {token}: {e:#}");
            DeadEnd
        })?;
        Ok(m.is_stopped())
    }

    /// Whether a grammar constrains the row now.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// For a free lazy row whose `text` has just grown: starts the grammar of the first
    /// trigger the text now ends with.
    pub fn after_text(&mut self, text: &str) {
        if self.active.is_some() {
            return;
        }
        if let Compiled::Lazy(triggers) = &*self.job {
            if let Some((_, m)) = triggers.iter().find(|(t, _)| text.ends_with(t.as_str())) {
                self.active = Some(m.deep_clone());
            }
        }
    }
}

/// `logits` with every token outside `allowed` at −∞, written into `out`. Inside a JSON
/// string nearly every token is allowed: whole words of the mask are copied as slices.
fn apply(allowed: &SimpleVob, logits: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.resize(logits.len(), f32::NEG_INFINITY);
    for (w, &bits) in allowed.as_slice().iter().enumerate() {
        let lo = w * 32;
        if lo >= logits.len() {
            break;
        }
        let hi = (lo + 32).min(logits.len());
        match bits {
            0 => {}
            u32::MAX => out[lo..hi].copy_from_slice(&logits[lo..hi]),
            _ => {
                for i in lo..hi {
                    if bits >> (i - lo) & 1 != 0 {
                        out[i] = logits[i];
                    }
                }
            }
        }
    }
}
