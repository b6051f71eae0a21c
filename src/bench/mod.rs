//! Benchmarks a user runs from the command line.
pub mod accuracy;
pub mod code;
pub mod dataset;
pub mod merge;
pub mod plot;
pub mod report;
pub mod run;
pub mod sample;
pub mod speed;
pub mod store;
