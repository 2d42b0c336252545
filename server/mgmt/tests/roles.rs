//! Peer roles in the registry: a database from before roles opens with every peer an
//! agent, nodes keep their role, and old JSON without `role` reads as an agent.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use ferry_api::v1::{AgentHello, AgentInfo, AgentState, PeerRole};
use ferry_mgmt::db::Db;

#[test]
fn registries_without_roles_open_as_agents_and_nodes_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mgmt.db");
    {
        // The agents table as it was before roles.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE agents (
                id TEXT PRIMARY KEY, hostname TEXT NOT NULL, address TEXT NOT NULL, addresses TEXT NOT NULL,
                version TEXT NOT NULL, cert_sha256 TEXT NOT NULL UNIQUE, state TEXT NOT NULL,
                registered INTEGER NOT NULL, last_seen INTEGER,
                job_cursor INTEGER NOT NULL DEFAULT 0, log_cursor INTEGER NOT NULL DEFAULT 0);
             INSERT INTO agents (id, hostname, address, addresses, version, cert_sha256, state, registered)
             VALUES ('old', 'appliance', '10.0.0.1:9876', '[]', '0.1', 'aa', 'active', 1);",
        )
        .unwrap();
    }
    let db = Db::open(&path, &dir.path().join("secrets.key")).unwrap();
    assert_eq!(db.agent("old").unwrap().unwrap().role, PeerRole::Agent);
    let node = AgentInfo {
        id: "n1".into(),
        hostname: "node".into(),
        address: "127.0.0.1:9876".into(),
        addresses: vec![],
        version: "0.1".into(),
        cert_sha256: "bb".into(),
        state: AgentState::Active,
        registered_unix: 2,
        last_seen_unix: None,
        role: PeerRole::Node,
    };
    db.add_agent(&node).unwrap();
    drop(db);
    // Reopening does not migrate twice.
    let db = Db::open(&path, &dir.path().join("secrets.key")).unwrap();
    assert_eq!(db.agent("n1").unwrap().unwrap(), node);
    let roles: Vec<PeerRole> = db.agents().unwrap().iter().map(|a| a.role).collect();
    assert_eq!(roles, [PeerRole::Agent, PeerRole::Node]);

    // Old agents send no role.
    let h: AgentHello =
        ferry_api::parse_body(br#"{"hostname":"a","version":"0.1","addresses":[]}"#).unwrap();
    assert_eq!(h.role, PeerRole::Agent);
    let h: AgentHello =
        ferry_api::parse_body(br#"{"hostname":"n","version":"0.1","role":"node"}"#).unwrap();
    assert_eq!(h.role, PeerRole::Node);
    assert!(
        ferry_api::parse_body::<AgentHello>(br#"{"hostname":"n","version":"0.1","role":"x"}"#)
            .is_err()
    );
}
