//! Everything about one model: the GGUF file, its tokenizer and chat template, and the forward pass.
pub mod catalog;
pub mod fetch;
pub mod tokenizer;
