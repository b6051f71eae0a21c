//! filled by the fetch work
