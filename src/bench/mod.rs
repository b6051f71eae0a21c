//! Benchmarks a user runs from the command line.
pub mod speed;
