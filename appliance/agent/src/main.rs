//! ferry-agent: the appliance API.
fn main() {}
