//! Revocation pushed to agents, several admins, and plan credentials sealed on the server,
//! against a real ferry-mgmt on loopback and a real ferry-agent process: a revoked admin's
//! direct connection is refused by the agent while another admin still works; the list
//! survives an agent restart; an agent that was down gets it at its next contact; only the
//! management server's signed, newer lists are taken; audit lines name the admin; the
//! plan's secret reaches the agent but not the server's database file.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{free_port, wait_for, Agent, Mgmt};
use ferry_api::v1::{PlanPush, ProgressEvent};
use ferry_mgmt::client::{AdminBundle, AdminClient};
use ferry_tls::revocation::{RevocationList, SignedRevocations};
use ferry_tls::trust::{client_config, Identity, ServerTrust};

const SECRET: &str = "vc-s3cret-9d2e77";

#[derive(Clone)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        std::io::stderr().write_all(b)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn client(cert: &str, key: &str, ca: &str, agent_id: &str) -> reqwest::Client {
    ferry_tls::http_client(
        client_config(
            ServerTrust::Ca {
                ca_pem: ca.to_string(),
                name: ferry_api::agent_server_name(agent_id),
            },
            Some(Identity::from_pem(cert, key).unwrap()),
        )
        .unwrap(),
    )
    .unwrap()
}

fn direct(b: &AdminBundle, agent_id: &str) -> reqwest::Client {
    client(&b.cert_pem, &b.key_pem, &b.ca_pem, agent_id)
}

/// The status code of `GET /v1/plans` on the agent, or None when unreachable.
async fn plans_status(c: &reqwest::Client, port: u16) -> Option<u16> {
    let r = c
        .get(format!("https://127.0.0.1:{port}/v1/plans"))
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_admin_refused_by_the_agent_others_kept() {
    let logs = Arc::new(Mutex::new(Vec::new()));
    let w = Buf(logs.clone());
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_ansi(false)
        .with_writer(move || w.clone())
        .init();

    let dir = tempfile::tempdir().unwrap();
    let mstate = dir.path().join("mgmt");
    let mgmt = Mgmt::start(&mstate, 0, false).await;
    let token = mgmt.token(600).await;
    let mgmt_addr = format!("127.0.0.1:{}", mgmt.port);
    let port = free_port();
    let a = Agent::start(
        &dir.path().join("a"),
        port,
        &[
            ("FERRY_MGMT", mgmt_addr.as_str()),
            ("FERRY_TOKEN", token.as_str()),
        ],
    )
    .await;
    let id = wait_for(30, "agent registered", || async {
        mgmt.admin
            .agents()
            .await
            .unwrap()
            .first()
            .map(|a| a.id.clone())
    })
    .await;

    // Three more admins, each with its own certificate, all accepted by the agent.
    let mut admins = Vec::new();
    for name in ["bob", "carol", "dave"] {
        let (b, info) = mgmt.admin.add_admin(name).await.unwrap();
        assert_eq!(info.name, name);
        admins.push(b);
    }
    let [bob, carol, dave] = [&admins[0], &admins[1], &admins[2]];
    for b in [bob, carol, dave] {
        let c = direct(b, &id);
        wait_for(20, "admin accepted by the agent", || async {
            (plans_status(&c, port).await == Some(200)).then_some(())
        })
        .await;
    }

    // Bob deploys a plan, carol runs it: the audit lines name them. The secret reaches the
    // agent, and is not in the server's database file.
    let plan = ferry_api::Plan::from_toml(
        "name = \"p\"\nschedule = \"0 0 1 1 *\"\n[vcenter]\nurl = \"https://127.0.0.1:1\"\ncredential = \"vc\"\ntrust_on_first_use = true\n[vms]\nall = true\n[destination]\nurl = \"/nonexistent\"\n",
    )
    .unwrap();
    let mut creds = std::collections::BTreeMap::new();
    creds.insert(
        "vc".to_string(),
        ferry_api::v1::Credential {
            user: Some("u".into()),
            password: Some(SECRET.into()),
            ..Default::default()
        },
    );
    let push = PlanPush {
        plan,
        credentials: creds,
    };
    let mgmt_url = format!("127.0.0.1:{}", mgmt.port);
    let bob_m = AdminClient::new(&mgmt_url, bob).unwrap();
    let carol_m = AdminClient::new(&mgmt_url, carol).unwrap();
    bob_m.apply_plan(&id, &push).await.unwrap();
    let last = carol_m.run_now(&id, "p", |_| {}).await.unwrap();
    assert!(matches!(last, Some(ProgressEvent::Done(_))), "{last:?}");
    let on_agent = std::fs::read_to_string(dir.path().join("a/plans/p.json")).unwrap();
    assert!(
        on_agent.contains(SECRET),
        "the credential reached the agent"
    );
    let mut db = Vec::new();
    for f in ["mgmt.db", "mgmt.db-wal"] {
        db.extend(std::fs::read(mstate.join(f)).unwrap_or_default());
    }
    assert!(
        !db.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "the credential is in mgmt.db in clear"
    );

    // Directly to the agent, the agent's own log names the admin.
    let r = direct(carol, &id)
        .put(format!("https://127.0.0.1:{port}/v1/plans/p"))
        .json(&push)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    wait_for(10, "the agent's log names the caller", || async {
        let l = a.stderr.lock().unwrap().clone();
        (l.contains("plan p deployed by the management server")
            && l.contains("plan p run now by the management server")
            && l.contains("plan p deployed by admin carol"))
        .then_some(())
    })
    .await;

    // Bob is revoked: the server pushes the list, and the agent refuses him; carol works.
    mgmt.admin.revoke_admin("bob").await.unwrap();
    let (bob_c, carol_c) = (direct(bob, &id), direct(carol, &id));
    wait_for(20, "bob refused by the agent", || async {
        (plans_status(&bob_c, port).await == Some(403)).then_some(())
    })
    .await;
    let body = bob_c
        .get(format!("https://127.0.0.1:{port}/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), 403);
    assert!(body.text().await.unwrap().contains("revoked"));
    assert_eq!(plans_status(&carol_c, port).await, Some(200));
    let st: serde_json::Value = carol_c
        .get(format!("https://127.0.0.1:{port}/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["revocations"]["version"], 1, "{st}");
    assert!(bob_m.agents().await.is_err(), "the server refuses bob too");

    // Only the management server sends lists, only signed by the CA, never older.
    let list_url = format!("https://127.0.0.1:{port}/v1/revocations");
    let current = mgmt.admin.admins().await.unwrap();
    assert_eq!(
        current.iter().filter(|a| a.revoked_unix.is_some()).count(),
        1
    );
    let ca_pem = std::fs::read_to_string(mstate.join("ca.pem")).unwrap();
    let ca = ferry_tls::pki::Ca::from_pem(
        &ca_pem,
        &std::fs::read_to_string(mstate.join("ca.key")).unwrap(),
    )
    .unwrap();
    let as_server = client(
        &std::fs::read_to_string(mstate.join("server.pem")).unwrap(),
        &std::fs::read_to_string(mstate.join("server.key")).unwrap(),
        &ca_pem,
        &id,
    );
    let empty = ca.sign_revocations(&RevocationList::default()).unwrap();
    let r = carol_c.put(&list_url).json(&empty).send().await.unwrap();
    assert_eq!(r.status(), 403, "an admin may not replace the list");
    let r = as_server.put(&list_url).json(&empty).send().await.unwrap();
    assert_eq!(r.status(), 422, "an older list is refused");
    assert!(r.text().await.unwrap().contains("older"));
    let other = ferry_tls::pki::Ca::create("another CA").unwrap();
    let forged = other
        .sign_revocations(&RevocationList {
            version: 9,
            ..Default::default()
        })
        .unwrap();
    let r = as_server.put(&list_url).json(&forged).send().await.unwrap();
    assert_eq!(r.status(), 422, "a list the CA did not sign is refused");
    let tampered = SignedRevocations {
        list: serde_json::to_string(&RevocationList {
            version: 9,
            ..Default::default()
        })
        .unwrap(),
        signature: empty.signature.clone(),
    };
    let r = as_server
        .put(&list_url)
        .json(&tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(plans_status(&bob_c, port).await, Some(403), "list kept");

    // The agent is down when dave is revoked: after its restart it still refuses bob (kept
    // in its state directory) and gets the new list at its next contact.
    let a = a.kill().await;
    mgmt.admin.revoke_admin("dave").await.unwrap();
    let a = a.restart().await;
    let dave_c = direct(dave, &id);
    let first = wait_for(20, "agent back", || async {
        plans_status(&bob_c, port).await
    })
    .await;
    assert_eq!(first, 403, "bob refused straight after the restart");
    wait_for(
        30,
        "dave refused after the agent's next contact",
        || async { (plans_status(&dave_c, port).await == Some(403)).then_some(()) },
    )
    .await;
    assert_eq!(plans_status(&carol_c, port).await, Some(200));

    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        text.contains("audit: admin bob deployed plan p to agent"),
        "no audit line for the deploy"
    );
    assert!(
        text.contains("audit: admin carol runs plan p now on agent"),
        "no audit line for run-now"
    );
    let agent_log = a.stderr.lock().unwrap().clone();
    assert!(
        !text.contains(SECRET) && !agent_log.contains(SECRET),
        "secret in a log"
    );
    drop(a);
    mgmt.stop().await;
}
