//! Several agents answer one question; an aggregation strategy combines their answers.
pub mod aggregate;
pub mod config;
pub mod extract;
pub mod prompts;
pub mod remote;
pub mod run;

pub use config::{Agent, Ensemble, Member, Remote, Strategy};
pub use extract::AnswerKind;
pub use run::{AgentTrace, Runner, Trace};
