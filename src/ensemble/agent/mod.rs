//! Agents that act: a loop in which each step an ensemble (one agent, or several voting over
//! the proposed call) answers or calls tools; calls are authorized by a policy, run, fed back
//! and journaled, so that a killed run can be resumed. See `run` for the loop.
mod config;
mod journal;
mod mcp;
mod policy;
mod resume;
mod run;
mod toolbox;
mod trace;

pub use config::{AgentConfig, AgentSpec, Limits};
pub use journal::Event;
pub use policy::{Decision, Rule};
pub use resume::resume;
pub use run::{run, RunOptions, Task, DEFAULT_SYSTEM};
pub use toolbox::BUILTINS;
pub use trace::{CallTrace, RunTrace, StepTrace, Stop, Usage};
