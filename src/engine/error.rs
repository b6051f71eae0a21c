//! Why a job failed, typed where callers answer differently per cause.

/// Why a job ended without an output, for callers that answer differently per cause (the
/// server maps `PromptTooLong` to HTTP 400). Other failures stay plain `anyhow` errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("the prompt is {prompt} tokens but {model} has a context of {ctx} tokens; shorten the prompt")]
    PromptTooLong {
        prompt: usize,
        ctx: usize,
        model: String,
    },
    /// Nobody waits for the job any more: its reply or its stream receiver was dropped.
    #[error("the job was cancelled: its caller went away")]
    Cancelled,
    /// The job's constraint does not compile (llguidance's reason); fix the schema or grammar.
    #[error("the grammar does not compile: {0}")]
    BadGrammar(String),
}
