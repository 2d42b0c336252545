//! Every request body the agent, the management server and the storage node decode, and plan
//! files: the parsers must return an error, never panic, on any bytes. The storage node's
//! commit body has its own target (`commit`).
#![no_main]

use ferry_api::node::{CatalogEntry, CommitHeader, MissingRequest, PruneRequest};
use ferry_api::v1::*;
use ferry_api::{parse_body, Plan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_body::<EnrollRequest>(data);
    let _ = parse_body::<AgentHello>(data);
    let _ = parse_body::<PairCsrRequest>(data);
    let _ = parse_body::<PairCompleteRequest>(data);
    let _ = parse_body::<PairRequest>(data);
    let _ = parse_body::<TokenCreate>(data);
    let _ = parse_body::<License>(data);
    let _ = parse_body::<MissingRequest>(data);
    let _ = parse_body::<PruneRequest>(data);
    let _ = parse_body::<CommitHeader>(data);
    // A node's catalog, as the management server reads it.
    let _ = parse_body::<Vec<CatalogEntry>>(data);
    if let Ok(p) = parse_body::<PlanPush>(data) {
        let _ = p.plan.validate();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Plan::from_toml(s);
        let _ = Plan::from_json(s);
    }
});
