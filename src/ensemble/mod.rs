//! Several agents answer one question; an aggregation strategy combines their answers.
pub mod agent;
pub mod aggregate;
pub mod ask;
pub mod calls;
pub mod confidence;
pub mod config;
pub mod decide;
pub mod events;
pub mod extract;
pub mod online;
pub mod program;
pub mod prompts;
mod refine;
pub mod remote;
mod reply;
pub mod run;
mod spans;
pub mod tool_defs;
pub mod trace;
pub mod verify;

pub use aggregate::WeightBy;
pub use ask::Ask;
pub use config::{Agent, Ensemble, Member, Remote, Strategy};
pub use events::Event;
pub use extract::AnswerKind;
pub use run::{AgentTrace, Runner, Trace};
pub use verify::{Verdict, Verifier};
