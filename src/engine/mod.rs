//! The only door to a model: front ends send [`Job`]s to the [`Engine`] thread, which loads
//! models, samples and batches generation; no front end holds a model itself.
mod constraint;
mod error;
mod generate;
mod load;
mod pace;
mod prefix;
pub mod sampler;
mod spans;
mod worker;

pub use crate::model::chat::Message;
pub use crate::model::tool_call::{canonical_json, ToolCall, ToolDef};
pub use crate::store::catalog::DEFAULT_MODEL;
pub use constraint::{Constraint, Grammar, GrammarArgs};
pub use error::JobError;
pub use generate::{Completion, Finish, Logprob, Output, Piece, TokenLogprobs};
pub use load::{load_tokenizer, model_name};
pub use prefix::PREFIX_CACHE_BYTES;
pub use sampler::{Sampler, SamplingParams, Signal, StopBelow};
pub use worker::{Engine, Job, Prompt, Stats, Stream};

/// Most tokens a reply gets when the caller names no limit (`ask`, the API, ensembles):
/// OpenAI's "until the context ends" would let a small model ramble for thousands of tokens.
pub const DEFAULT_MAX_TOKENS: usize = 512;
