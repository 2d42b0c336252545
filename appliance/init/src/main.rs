//! ferry-init: PID 1 of the Ferry appliance.
fn main() {}
