//! ferry-init's library part: the parsers of untrusted input that are
//! fuzzed and property-tested on their own. Everything else is the binary
//! (see `main.rs`).

pub mod ovfenv;
