//! filled by the catalog work
