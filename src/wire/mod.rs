//! OpenAI's JSON shapes for `/v1/chat/completions`, `/v1/completions` and `/v1/models`, as
//! serde types: what the server parses and answers, and what a remote ensemble member sends
//! and reads back. Field names and meanings follow OpenAI's API reference
//! (platform.openai.com/docs/api-reference/chat).
//!
//! This module depends on nothing else in the crate, so the server and the ensemble's
//! remote-member client can both use it without depending on each other. Checking values
//! and turning them into engine terms is the server's job (`server/openai.rs`).
mod error;
mod request;
mod response;
pub mod responses;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use request::{
    ChatExtension, ChatMessage, ChatRequest, Common, CompletionRequest, Content, FunctionCall,
    FunctionDef, FunctionName, GrammarFormat, GrammarSyntax, JsonSchemaFormat, NamedTool,
    OneOrMany, Part, ResponseFormat, StreamOptions, Tool, ToolCall, ToolChoice, ToolMode,
};
pub use response::{
    ChatChoice, ChatChunk, ChatCompletion, ChatLogprobs, ChunkChoice, Completion, Delta,
    FinishReason, FunctionDelta, ModelCard, ModelList, PromptTokensDetails, TextChoice,
    TextCompletion, TextLogprobs, TokenLogprob, ToolCallDelta, TopLogprob, Usage,
};
