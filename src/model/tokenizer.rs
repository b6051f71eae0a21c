//! A `tokenizers::Tokenizer` rebuilt from a GGUF file's own `tokenizer.ggml.*` metadata, so that
//! it splits text exactly like llama.cpp does (`src/llama-vocab.cpp`), without any tokenizer.json.
//!
//! * `gpt2` vocabularies: byte-level BPE with the file's merges, pre-split by the regexes
//!   llama.cpp picks for `tokenizer.ggml.pre` (`llm_tokenizer_bpe`).
//! * `llama` vocabularies (SentencePiece, e.g. gemma3): llama.cpp's `llm_tokenizer_spm` merges
//!   the adjacent pair whose concatenation is the highest-scoring token, then falls back to bytes.
//!   That is a byte-fallback BPE whose merges are every two-piece split of every normal token,
//!   ranked by the merged token's score (a Unigram model from the same scores does not match).

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// Token texts that llama.cpp's vocab loader treats as end-of-generation, and forces to control
/// type when the file says otherwise (e.g. qwen2.5's normal "</s>", gemma3's user-defined "</s>"):
/// its EOG list plus the FIM pad / repo / file-separator texts it also adds to the EOG set.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

/// FIM prefix/suffix/middle texts: llama.cpp forces these to control type too (not EOG).
const FIM_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];

// Pre-tokenizer regexes, as in `llm_tokenizer_bpe`'s constructor in llama.cpp's
// src/llama-vocab.cpp (there written as C++ string literals).
const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Where a growing token sequence's text was last settled, for [`GgufTokenizer::decode_more`].
/// Decoding the whole sequence at every token costs O(n²) over a completion (8 smollm2 rows
/// of 256 tokens: 2 % of the decode thread in `perf`). Instead each token decodes a window
/// from one settled point back, and the text the window adds past its decode at that point
/// (`context`) is new. Both decodes start at the same token, so a decoder that treats the
/// first token apart (SentencePiece's leading-space strip) treats them alike; a window that
/// ends inside a character (U+FFFD) is not settled. This is the prefix/read offset scheme of
/// Hugging Face's text-generation-inference (`Model::decode_token`).
#[derive(Default, Clone, Debug)]
pub struct Incremental {
    /// The window's first token.
    from: usize,
    /// The tokens settled: the text up to `settled` bytes is theirs for good.
    read: usize,
    settled: usize,
    /// The decode of `from..read`.
    context: String,
}

/// The GGUF's tokenizer plus the special ids the engine needs.
pub struct GgufTokenizer {
    /// Control tokens written as text are recognised (llama.cpp's parse_special=true).
    tokenizer: Tokenizer,
    /// Same, but control tokens are encoded as plain text (parse_special=false).
    plain: Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Whether prompts should start with `bos` (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// Ids that end generation: eos, eot, eom and llama.cpp's end-of-generation texts.
    pub stop_ids: Vec<u32>,
    /// Byte-level BPE (`gpt2`) rather than SentencePiece (`llama`): how a vocabulary string
    /// spells its bytes, for [`GgufTokenizer::token_bytes`].
    byte_level: bool,
}

/// What one token stands for, as grammar-constrained decoding sees it (engine/constraint.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenBytes {
    /// The bytes the token adds to the text.
    Text(Vec<u8>),
    /// A control token, by its vocabulary name (e.g. "<|im_end|>"); it adds no text.
    Special(String),
}

impl GgufTokenizer {
    pub fn from_gguf(content: &Content) -> Result<Self> {
        Self::from_metadata(&content.metadata)
    }

    /// Builds the tokenizer from GGUF metadata alone.
    pub fn from_metadata(md: &HashMap<String, Value>) -> Result<Self> {
        let model =
            get_str(md, "tokenizer.ggml.model")?.context("GGUF has no tokenizer.ggml.model")?;
        let pre = get_str(md, "tokenizer.ggml.pre")?;
        let tokens = get_tokens(md)?;
        let n = tokens.len();
        let types = match md.get("tokenizer.ggml.token_type") {
            Some(v) => int_array(v, "tokenizer.ggml.token_type")?,
            None => vec![TYPE_NORMAL; n],
        };
        if types.len() < n {
            bail!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                types.len()
            );
        }
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), id as u32))
            .collect();
        if vocab.len() != n {
            bail!("GGUF vocabulary has duplicate tokens");
        }

        let (mut tokenizer, default_add_bos) = match model {
            "gpt2" => gpt2_tokenizer(md, pre, vocab)?,
            "llama" => (spm_tokenizer(md, &tokens, &types, vocab)?, true),
            other => bail!("unsupported tokenizer.ggml.model '{other}' (supported: gpt2, llama)"),
        };

        // Control/unknown tokens are split out of the text only when parsing specials (special
        // AddedTokens); user-defined ones always are, matched on the raw text before the
        // normalizer turns spaces into "▁" (llama.cpp's `tokenizer_st_partition`).
        let is_special = |id: usize| {
            matches!(types[id], TYPE_CONTROL | TYPE_UNKNOWN)
                || EOG_TEXTS.contains(&tokens[id].as_str())
                || FIM_TEXTS.contains(&tokens[id].as_str())
        };
        let special: Vec<AddedToken> = (0..n)
            .filter(|&id| is_special(id))
            .map(|id| AddedToken::from(tokens[id].clone(), true))
            .collect();
        let user: Vec<AddedToken> = (0..n)
            .filter(|&id| types[id] == TYPE_USER_DEFINED && !is_special(id))
            .map(|id| AddedToken::from(tokens[id].clone(), false).normalized(false))
            .collect();
        tk(tokenizer.add_special_tokens(special))?;
        tk(tokenizer.add_tokens(user))?;
        let mut plain = tokenizer.clone();
        plain.set_encode_special_tokens(true);

        // Without the keys, llama.cpp keeps SentencePiece's defaults bos=1, eos=2.
        let (default_bos, default_eos) = if model == "llama" {
            (Some(1), Some(2))
        } else {
            (None, None)
        };
        let in_vocab = |id: Option<u32>| id.filter(|&id| (id as usize) < n);
        let bos = in_vocab(get_u32(md, "tokenizer.ggml.bos_token_id")?.or(default_bos));
        let eos = in_vocab(get_u32(md, "tokenizer.ggml.eos_token_id")?.or(default_eos));
        let add_bos = get_bool(md, "tokenizer.ggml.add_bos_token")?.unwrap_or(default_add_bos);
        if add_bos && bos.is_none() {
            bail!(
                "tokenizer.ggml.add_bos_token is true, but tokenizer.ggml.bos_token_id is not set"
            );
        }

        let mut stop_ids: Vec<u32> = [
            eos,
            in_vocab(get_u32(md, "tokenizer.ggml.eot_token_id")?),
            in_vocab(get_u32(md, "tokenizer.ggml.eom_token_id")?),
        ]
        .into_iter()
        .flatten()
        .chain(
            (0..n)
                .filter(|&id| EOG_TEXTS.contains(&tokens[id].as_str()))
                .map(|id| id as u32),
        )
        .collect();
        stop_ids.sort_unstable();
        stop_ids.dedup();

        Ok(Self {
            tokenizer,
            plain,
            bos,
            eos,
            add_bos,
            stop_ids,
            byte_level: model == "gpt2",
        })
    }

    /// Encodes without adding BOS. With `parse_special`, control tokens written as text (e.g.
    /// "<|im_start|>") become their id; without, they are ordinary text, so message content can
    /// never inject a role marker.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let tokenizer = if parse_special {
            &self.tokenizer
        } else {
            &self.plain
        };
        Ok(tk(tokenizer.encode_fast(text, false))?.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        tk(self.tokenizer.decode(ids, skip_special))
    }

    /// Brings `text`, the decode of `ids` but its last tokens (special ones skipped), up to
    /// the decode of all of `ids`, decoding only the tokens since `at`'s last settled point.
    /// See [`Incremental`].
    pub fn decode_more(&self, ids: &[u32], at: &mut Incremental, text: &mut String) -> Result<()> {
        let window = self.decode(&ids[at.from..], true)?;
        let Some(new) = window.strip_prefix(at.context.as_str()) else {
            // Not a decoder these windows suit: the whole sequence, and from the start again.
            *text = self.decode(ids, true)?;
            *at = Incremental::default();
            return Ok(());
        };
        text.truncate(at.settled);
        text.push_str(new);
        // Settled once the new tokens end on a whole character: later tokens only add text.
        if !new.is_empty() && !new.ends_with('\u{FFFD}') {
            at.context = self.decode(&ids[at.read..], true)?;
            (at.from, at.read, at.settled) = (at.read, ids.len(), text.len());
        }
        Ok(())
    }

    /// The token's vocabulary string (e.g. "<|im_start|>", or byte-level "Ġthe").
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Every token's [`TokenBytes`], by id. The special ones are those `decode` skips (control,
    /// unknown, end-of-generation and FIM tokens); user-defined tokens such as Qwen's
    /// "<tool_call>" are text. A vocabulary string that spells no bytes (none in the models
    /// we know) is empty text, which no grammar can match.
    pub fn token_bytes(&self) -> Vec<TokenBytes> {
        let added = self.tokenizer.get_added_tokens_decoder();
        let gpt2_bytes = gpt2_byte_of_char();
        (0..self.vocab_size() as u32)
            .map(|id| {
                let Some(name) = self.tokenizer.id_to_token(id) else {
                    return TokenBytes::Text(Vec::new());
                };
                match added.get(&id) {
                    Some(a) if a.special => return TokenBytes::Special(name),
                    Some(a) => return TokenBytes::Text(a.content.clone().into_bytes()),
                    None => {}
                }
                TokenBytes::Text(if self.byte_level {
                    let bytes: Option<Vec<u8>> =
                        name.chars().map(|c| gpt2_bytes.get(&c).copied()).collect();
                    bytes.unwrap_or_default()
                } else if let Some(b) = spm_byte(&name) {
                    vec![b]
                } else {
                    name.replace('▁', " ").into_bytes()
                })
            })
            .collect()
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// The byte each character of a byte-level vocabulary stands for: GPT-2's `bytes_to_unicode`
/// (openai/gpt-2 `src/encoder.py`), where printable Latin-1 bytes are themselves and the
/// others, in order, are U+0100 onwards.
fn gpt2_byte_of_char() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (char::from(b), b)
            } else {
                next += 1;
                (char::from_u32(next - 1).expect("below U+0200"), b)
            }
        })
        .collect()
}

/// A SentencePiece byte-fallback token "<0xNN>"'s byte.
fn spm_byte(name: &str) -> Option<u8> {
    let hex = name.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// Byte-level BPE: returns the tokenizer and llama.cpp's default for add_bos.
fn gpt2_tokenizer(
    md: &HashMap<String, Value>,
    pre: Option<&str>,
    vocab: Vocab,
) -> Result<(Tokenizer, bool)> {
    // Regex lists and flags per `tokenizer.ggml.pre`, following `llama_vocab::impl::load` and
    // `llm_tokenizer_bpe`. The llama3 family also matches whole words before merging
    // (ignore_merges) and adds BOS by default.
    let (regexes, llama3): (Vec<&str>, bool) = match pre.unwrap_or("default") {
        "default" => (
            vec![
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2_RE,
                r"\p{N}+",
                "[0-9][0-9][0-9]",
            ],
            false,
        ),
        "gpt-2" | "mpt" | "olmo" => (vec![GPT2_RE], false),
        // Each digit on its own, then the GPT-2 regex.
        "smollm" | "starcoder" | "refact" => (vec![r"\p{N}", GPT2_RE], false),
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" => (vec![QWEN2_RE], false),
        "llama3" | "llama-v3" | "llama-bpe" => (vec![LLAMA3_RE], true),
        other => {
            bail!("unsupported tokenizer.ggml.pre '{other}' for a gpt2 (byte-level BPE) vocabulary")
        }
    };

    let merges_value = md
        .get("tokenizer.ggml.merges")
        .context("GGUF has no tokenizer.ggml.merges")?;
    let mut merges: Merges = Vec::new();
    for m in merges_value.to_vec()? {
        let m = m.to_string()?;
        // llama.cpp splits at the first space after the first byte. Merges whose parts are not
        // in the vocabulary can never fire; the BPE builder would reject them, so drop them.
        let Some(at) = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
            continue;
        };
        let (a, b) = (&m[..at], &m[at + 1..]);
        if vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&format!("{a}{b}"))
        {
            merges.push((a.to_owned(), b.to_owned()));
        }
    }
    let bpe = tk(BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(llama3)
        .build())?;

    let mut pre_tokenizers: Vec<PreTokenizerWrapper> = Vec::new();
    for re in regexes {
        let split = Split::new(
            SplitPattern::Regex(re.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        );
        pre_tokenizers.push(tk(split)?.into());
    }
    // Bytes to GPT-2's printable characters only; the splitting is done above.
    pre_tokenizers.push(ByteLevel::new(false, false, false).into());

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_pre_tokenizer(Some(PreTokenizerSequence::new(pre_tokenizers)))
        .with_decoder(Some(ByteLevel::new(false, false, false)));
    Ok((tokenizer, llama3))
}

/// SentencePiece vocabulary as a byte-fallback BPE (see the module comment).
fn spm_tokenizer(
    md: &HashMap<String, Value>,
    tokens: &[String],
    types: &[i32],
    vocab: Vocab,
) -> Result<Tokenizer> {
    let scores = match md.get("tokenizer.ggml.scores") {
        Some(v) => float_array(v)?,
        None => vec![0.0; tokens.len()],
    };
    if scores.len() < tokens.len() {
        bail!(
            "tokenizer.ggml.scores has {} entries for {} tokens",
            scores.len(),
            tokens.len()
        );
    }

    // Only normal tokens are merge results, so the pieces of an unparsed control token such
    // as "<start_of_turn>" never fuse back into its id.
    let mut ranked: Vec<(f32, usize, usize)> = Vec::new(); // (score, token id, split byte offset)
    for (id, token) in tokens.iter().enumerate() {
        if types[id] != TYPE_NORMAL {
            continue;
        }
        for (at, _) in token.char_indices().skip(1) {
            if vocab.contains_key(&token[..at]) && vocab.contains_key(&token[at..]) {
                ranked.push((scores[id], id, at));
            }
        }
    }
    // Highest score first. llama.cpp breaks score ties by position; scores are distinct per
    // token in practice, so ordering ties by id is enough.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let merges: Merges = ranked
        .into_iter()
        .map(|(_, id, at)| (tokens[id][..at].to_owned(), tokens[id][at..].to_owned()))
        .collect();

    let unk_id = get_u32(md, "tokenizer.ggml.unknown_token_id")?.unwrap_or(0) as usize;
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true);
    if let Some(unk) = tokens.get(unk_id) {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = tk(builder.build())?;

    // llama.cpp prepends a space (to each text run) only with add_space_prefix, then escapes
    // spaces as "▁"; llama.cpp's default for SentencePiece is true, gemma3 sets false.
    let add_space_prefix = get_bool(md, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
    let mut normalizers = Vec::new();
    if add_space_prefix {
        normalizers.push(Prepend::new("▁".to_owned()).into());
    }
    normalizers.push(tk(Replace::new(" ", "▁"))?.into());

    let mut decoders: Vec<DecoderWrapper> = vec![
        tk(Replace::new("▁", " "))?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }

    let mut tokenizer = Tokenizer::new(bpe);
    tk(tokenizer.with_normalizer(Some(NormalizerSequence::new(normalizers))))?;
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// tokenizers' boxed errors are not `std::error::Error`, so convert by hand.
fn tk<T>(r: tokenizers::Result<T>) -> Result<T> {
    r.map_err(|e| anyhow!(e))
}

fn get_str<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<Option<&'a str>> {
    md.get(key)
        .map(|v| {
            v.to_string()
                .map(String::as_str)
                .with_context(|| format!("{key} is not a string"))
        })
        .transpose()
}

fn get_bool(md: &HashMap<String, Value>, key: &str) -> Result<Option<bool>> {
    md.get(key)
        .map(|v| v.to_bool().with_context(|| format!("{key} is not a bool")))
        .transpose()
}

fn get_u32(md: &HashMap<String, Value>, key: &str) -> Result<Option<u32>> {
    md.get(key)
        .map(|v| {
            as_int(v)
                .and_then(|i| u32::try_from(i).ok())
                .with_context(|| format!("{key} is not a token id"))
        })
        .transpose()
}

/// Converters write ids as u32, but accept any integer type.
fn as_int(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => i64::try_from(x).ok()?,
        Value::I64(x) => x,
        _ => return None,
    })
}

fn get_tokens(md: &HashMap<String, Value>) -> Result<Vec<String>> {
    let list = md
        .get("tokenizer.ggml.tokens")
        .context("GGUF has no tokenizer.ggml.tokens")?;
    list.to_vec()?
        .iter()
        .enumerate()
        .map(|(id, t)| {
            let t = t
                .to_string()
                .context("tokenizer.ggml.tokens holds a non-string")?;
            // llama.cpp renames empty tokens so that every text maps to one id.
            Ok(if t.is_empty() {
                format!("[EMPTY_{id}]")
            } else {
                t.clone()
            })
        })
        .collect()
}

fn int_array(v: &Value, key: &str) -> Result<Vec<i32>> {
    v.to_vec()?
        .iter()
        .map(|x| {
            as_int(x)
                .and_then(|i| i32::try_from(i).ok())
                .with_context(|| format!("{key} holds a non-integer"))
        })
        .collect()
}

/// Scores are f32, though llama.cpp also accepts i32.
fn float_array(v: &Value) -> Result<Vec<f32>> {
    v.to_vec()?
        .iter()
        .map(|x| match x {
            Value::F32(f) => Ok(*f),
            other => as_int(other)
                .map(|i| i as f32)
                .context("tokenizer.ggml.scores holds a non-number"),
        })
        .collect()
}
