//! Collection from a compromised agent (issue 16, finding 9): the real `ferry mgmt serve`
//! collects from a fake agent that holds a genuine agent certificate of its CA. A page that
//! does not move the cursor, a page with more records than asked, and a page body larger
//! than the cap each end the round with an error (the old collector looped for ever or
//! buffered without bound); the server answers its admin meanwhile; a legitimate page is
//! collected; and a flood of hellos starts one sync, not one per hello.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;
mod fake_agent;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use common::{free_port, serve_mgmt, ServedMgmt};
use ferry_mgmt::client::{AdminBundle, AdminClient};

#[derive(Default)]
struct Fake {
    mode: Mutex<&'static str>,
    jobs_calls: AtomicUsize,
    events_calls: AtomicUsize,
    release: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
}

#[derive(serde::Deserialize)]
struct After {
    after: u64,
}

fn entry(seq: u64, message: String) -> serde_json::Value {
    serde_json::json!({"seq": seq, "time_ms": 0, "level": "info", "message": message})
}

async fn jobs(State(f): State<Arc<Fake>>, Query(q): Query<After>) -> Json<serde_json::Value> {
    f.jobs_calls.fetch_add(1, Ordering::SeqCst);
    let release = f.release.lock().unwrap().clone();
    if let Some(mut r) = release {
        let _ = r.wait_for(|v| *v).await;
    }
    Json(serde_json::json!({"records": [], "next": q.after}))
}

async fn events(State(f): State<Arc<Fake>>, Query(q): Query<After>) -> Json<serde_json::Value> {
    f.events_calls.fetch_add(1, Ordering::SeqCst);
    let mode = *f.mode.lock().unwrap();
    let after = q.after;
    let (entries, next): (Vec<_>, u64) = match mode {
        // The same record and cursor whatever the cursor is.
        "stuck" => (vec![entry(after.max(5), "again".into())], after.max(5)),
        "too_many" => (
            (1..=600).map(|i| entry(after + i, "x".into())).collect(),
            after + 600,
        ),
        "huge" => (vec![entry(after + 1, "y".repeat(9 << 20))], after + 1),
        // A legitimate agent: three lines, then nothing new.
        _ if after < 3 => (
            (after + 1..=3)
                .map(|s| entry(s, format!("line {s}")))
                .collect(),
            3,
        ),
        _ => (Vec::new(), after),
    };
    Json(serde_json::json!({"entries": entries, "next": next}))
}

fn router(f: Arc<Fake>) -> Router {
    Router::new()
        .route("/v1/jobs", get(jobs))
        .route("/v1/events", get(events))
        .route("/v1/revocations", put(|| async { "{}" }))
        .with_state(f)
}

struct Setup {
    _dir: tempfile::TempDir,
    _serve: ServedMgmt,
    admin: AdminClient,
    fake: Arc<Fake>,
    agent: fake_agent::FakeAgent,
    enrolled: fake_agent::Enrolled,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mgmt");
    let port = free_port();
    let serve = serve_mgmt(
        &state,
        &format!("127.0.0.1:{port}"),
        // Only hellos and the admin start collections here.
        &["--collect-every", "3600"],
        std::process::Stdio::null(),
    );
    let admin = AdminClient::new(
        &serve.addr,
        &AdminBundle::load(&state.join("admin.pem")).unwrap(),
    )
    .unwrap();
    let fake = Arc::new(Fake::default());
    let (c, k) = fake_agent::throwaway_cert("pending");
    let agent = fake_agent::start(fake_agent::tls(&c, &k), router(fake.clone())).await;
    let enrolled = fake_agent::enroll(
        &serve.addr,
        &serve.ca_sha256,
        &admin,
        &agent.addr.to_string(),
    )
    .await;
    // From now on it serves the genuine agent certificate the server expects.
    agent.tls.send_replace(enrolled.server_tls());
    Setup {
        _dir: dir,
        _serve: serve,
        admin,
        fake,
        agent,
        enrolled,
    }
}

async fn collect_err(s: &Setup, mode: &'static str) -> String {
    *s.fake.mode.lock().unwrap() = mode;
    let before = s.fake.events_calls.load(Ordering::SeqCst);
    let r = tokio::time::timeout(Duration::from_secs(60), s.admin.collect(&s.enrolled.id))
        .await
        .unwrap_or_else(|_| panic!("{mode}: the collection round never ended"));
    let e = r.expect_err(mode).to_string();
    let calls = s.fake.events_calls.load(Ordering::SeqCst) - before;
    assert!(calls <= 2, "{mode}: {calls} pages asked in one round");
    // The server still answers its admin.
    let list = s.admin.agents().await.unwrap();
    assert!(list.iter().any(|a| a.id == s.enrolled.id));
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_that_do_not_advance_or_are_too_large_end_the_round() {
    let s = setup().await;
    let e = collect_err(&s, "stuck").await;
    assert!(
        e.contains("does not advance") || e.contains("not after"),
        "{e}"
    );
    let e = collect_err(&s, "too_many").await;
    assert!(e.contains("600 records"), "{e}");
    let e = collect_err(&s, "huge").await;
    assert!(e.contains("larger than"), "{e}");

    // The legitimate agent's lines are collected (the stuck one's record 5 came first, so
    // this agent's cursor is already past 3: a fresh fake shows a legitimate round).
    let s = setup().await;
    *s.fake.mode.lock().unwrap() = "ok";
    let rep = s.admin.collect(&s.enrolled.id).await.unwrap();
    assert_eq!(rep.logs, 3);
    let logs = s.admin.logs(Some(&s.enrolled.id), 0, 100).await.unwrap();
    assert_eq!(logs.len(), 3, "{logs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hellos_runs_one_sync_at_a_time() {
    let s = setup().await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    *s.fake.release.lock().unwrap() = Some(rx);
    *s.fake.mode.lock().unwrap() = "ok";
    let advertise = s.agent.addr.to_string();
    let hellos = (0..20).map(|_| s.enrolled.hello(&advertise));
    for st in futures::future::join_all(hellos).await {
        assert!(st.is_success(), "{st}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while s.fake.jobs_calls.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no sync started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // More hellos while the sync is held: still one.
    for _ in 0..5 {
        assert!(s.enrolled.hello(&advertise).await.is_success());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.fake.jobs_calls.load(Ordering::SeqCst), 1);
    // The admin is served while the agent holds the sync.
    assert!(!s.admin.agents().await.unwrap().is_empty());

    // Released, the sync ends, and the next hello starts the next one.
    tx.send_replace(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let _ = s.enrolled.hello(&advertise).await;
        if s.fake.jobs_calls.load(Ordering::SeqCst) >= 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no second sync");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
