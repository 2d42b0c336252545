//! ferry-image: assembles the appliance boot artifacts.
fn main() {}
