//! llm-layers: composable Tower middleware for calling LLM providers.
//!
//! This umbrella crate re-exports the workspace crates, one Cargo feature per crate.

pub use llm_layers_core as core;
