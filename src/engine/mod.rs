//! Sampling and batched generation on top of a loaded model.
pub mod generate;
pub mod load;
pub mod sampler;
pub mod worker;

pub use crate::model::catalog::DEFAULT_MODEL;
pub use crate::model::chat::Message;
pub use crate::model::Model;
/// The model catalog and its download logic, for front ends that manage models.
pub use crate::model::{catalog, fetch};
pub use generate::{generate, Completion, Finish, JobError, Output, Request};
pub use load::{load, load_tokenizer};
pub use sampler::{Sampler, SamplingParams};
pub use worker::{Engine, Job, Prompt, Stats};
