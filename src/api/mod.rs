//! api/mod
