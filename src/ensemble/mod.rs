//! Combining the answers of several agents into one decision.
pub mod aggregate;
pub mod extract;
