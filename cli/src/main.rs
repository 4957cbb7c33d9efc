//! `tern`: the Tern terminal client.

#![forbid(unsafe_code)]

fn main() {}
