//! Product definitions (placeholder until the product module lands).
