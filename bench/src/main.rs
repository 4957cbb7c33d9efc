//! `tern-bench`: the Tern benchmark harness.

#![forbid(unsafe_code)]

fn main() {}
