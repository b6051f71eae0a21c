//! Conclave: small open-weight GGUF models run locally as an ensemble of agents.
//!
//! Data flows one way: `model` (GGUF, tokenizer, chat template, forward pass) → `engine`
//! (sampling, batched generation, KV cache) → `ensemble` (agents, roles, aggregation) →
//! front ends (`cli`, `server`, `bench`). `tools` (sandboxed Python, calculator) serves
//! `ensemble` and the front ends. `store` (the catalog, fetching models) serves `engine` and
//! the front ends that manage models. `wire` (OpenAI's JSON shapes) depends on nothing here;
//! the server and the ensemble's remote members use it. `telemetry` sets up logging and
//! OpenTelemetry export for the binary; the other modules only open spans.
pub mod bench;
pub mod cli;
pub mod engine;
pub mod ensemble;
pub mod model;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tools;
pub mod wire;
