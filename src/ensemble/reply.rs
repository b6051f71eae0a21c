//! What agents answered, from the engine or from a remote server, before it is traced.
use super::confidence::Signals;
use crate::engine::{Finish, Output};

/// One engine job's, or one remote member's calls', replies: one per agent, in order.
#[derive(Debug, Default)]
pub(crate) struct Replies {
    pub prompt_tokens: usize,
    /// Of `prompt_tokens`, those taken from the engine's prefix store.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    /// A failed agent's entry is why it failed.
    pub replies: Vec<std::result::Result<Reply, String>>,
}

#[derive(Debug)]
pub(crate) struct Reply {
    pub text: String,
    pub tokens: usize,
    pub finish: Option<Finish>,
    pub logprob_mean: f32,
    pub seconds: f64,
    pub signals: Signals,
}

impl From<Output> for Replies {
    fn from(output: Output) -> Self {
        let seconds = output.prefill_seconds + output.decode_seconds;
        Replies {
            prompt_tokens: output.prompt_tokens,
            cached_tokens: output.cached_tokens,
            completion_tokens: output.completion_tokens(),
            replies: output
                .completions
                .into_iter()
                .map(|c| {
                    Ok(Reply {
                        logprob_mean: c.logprob_mean(),
                        tokens: c.tokens.len(),
                        finish: Some(c.finish),
                        signals: c.signals.as_deref().map(Signals::of).unwrap_or_default(),
                        text: c.text,
                        seconds,
                    })
                })
                .collect(),
        }
    }
}
