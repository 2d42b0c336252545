//! Plans and jobs end to end: ferry-mgmt on loopback (license service on), the govmomi
//! simulator with a VM disk seeded through `/folder`, a local-folder repository, and the
//! real ferry-agent process. A scheduled job fires on time, one VM failing does not stop
//! the other, run-now streams progress and is a CBT incremental, the snapshot is removed,
//! records and logs are collected without duplicates, a reboot keeps identity and plans,
//! jobs run while the management server is down and are collected later, and a run missed
//! while the agent was off runs at boot.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{free_port, wait_for, Agent, Mgmt};
use ferry_api::v1::{Credential, JobPage, JobState, PlanPush, ProgressEvent, Trigger};
use ferry_testkit::vcsim::Vcsim;
use ferry_vsphere::job::monolithic_flat_descriptor;
use ferry_vsphere::{
    Client, ConnectOptions, Credentials, Datastore, DatastorePath, Trust, VmSelector,
};

const VM: &str = "DC0_H0_VM0";

fn plan(name: &str, schedule: &str, url: &str, thumb: &str, repo: &str, missed: bool) -> PlanPush {
    let text = format!(
        r#"
name = "{name}"
schedule = "{schedule}"
run_missed = {missed}
verify = true
[vcenter]
url = "{url}"
credential = "vc"
thumbprint = "{thumb}"
[vms]
names = ["{VM}", "no-such-vm"]
[destination]
url = "{repo}"
[retention]
keep_last = 3
[options]
enable_cbt = true
"#
    );
    PlanPush {
        plan: ferry_api::Plan::from_toml(&text).unwrap(),
        credentials: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_and_manual_jobs_collected_across_reboots_and_outages() {
    // The simulator, with the VM's first disk seeded with known bytes.
    let sim = Vcsim::start(&["-disks", "8M"]).await.unwrap();
    let (url, thumb) = (sim.url.clone(), sim.thumbprint.clone());
    let vc = Client::connect(&ConnectOptions::new(
        &url,
        Credentials::new(&sim.user, &sim.password),
        Trust::Thumbprint(thumb.clone()),
    ))
    .await
    .unwrap();
    let vm = vc.find_vm(&VmSelector::Name(VM.into())).await.unwrap();
    let info = vc.vm_info(&vm).await.unwrap();
    let ds = Datastore::new(&vc, &info.datacenter, 4);
    let seed = |data: Vec<u8>| {
        let (ds, d) = (&ds, &info.disks[0]);
        async move {
            let p = DatastorePath::parse(&d.file_name).unwrap();
            let stem = p
                .path
                .rsplit('/')
                .next()
                .unwrap()
                .trim_end_matches(".vmdk")
                .to_string();
            let flat = format!("{stem}-flat.vmdk");
            ds.put_bytes(&p.sibling(&flat), data.clone()).await.unwrap();
            ds.put_bytes(
                &p,
                monolithic_flat_descriptor(data.len() as u64, &flat).into_bytes(),
            )
            .await
            .unwrap();
        }
    };
    let cap = info.disks[0].capacity as usize;
    let mut data = vec![0u8; cap];
    ferry_testkit::Rng::new(3).fill(&mut data[..cap / 2]);
    seed(data.clone()).await;
    // CBT on, and a first change generation so the disk carries a changeId.
    vc.enable_cbt(&vm, Duration::from_secs(30)).await.unwrap();
    let cbt = format!("/cbt?vm={}&key={}", vm.value, info.disks[0].key);
    sim.control(&cbt, "").await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo = repo.to_str().unwrap();
    let mgmt = Mgmt::start(&dir.path().join("mgmt"), 0, true).await;
    let mgmt_addr = format!("127.0.0.1:{}", mgmt.port);
    let token = mgmt.token(600).await;
    let port = free_port();
    let mut agent = Agent::start(
        &dir.path().join("agent"),
        port,
        &[
            ("FERRY_MGMT", mgmt_addr.as_str()),
            ("FERRY_TOKEN", token.as_str()),
        ],
    )
    .await;
    let id = wait_for(30, "registered", || async {
        mgmt.admin
            .agents()
            .await
            .unwrap()
            .first()
            .map(|a| a.id.clone())
    })
    .await;
    let http = mgmt.agent_http(&id);
    let agent_get = |path: String| {
        let http = http.clone();
        async move {
            http.get(format!("https://127.0.0.1:{port}{path}"))
                .send()
                .await
                .ok()?
                .json::<serde_json::Value>()
                .await
                .ok()
        }
    };
    let st = wait_for(10, "status", || agent_get("/v1/status".into())).await;
    assert_eq!(
        st["license"]["valid"], true,
        "licensed by the service: {st}"
    );

    let with_creds = |mut p: PlanPush| {
        p.credentials.insert(
            "vc".into(),
            Credential {
                user: Some(sim.user.clone()),
                password: Some(sim.password.clone()),
                ..Default::default()
            },
        );
        p
    };

    // --- A scheduled job fires on time (every 10 s).
    let p1 = with_creds(plan("p1", "*/10 * * * * *", &url, &thumb, repo, false));
    let t0 = std::time::Instant::now();
    mgmt.admin.apply_plan(&id, &p1).await.unwrap();
    let first = wait_for(60, "first scheduled job", || async {
        mgmt.admin.collect(&id).await.ok()?;
        mgmt.admin.jobs(Some(&id), 10).await.unwrap().pop()
    })
    .await
    .record;
    assert!(t0.elapsed() < Duration::from_secs(40));
    assert_eq!(first.trigger, Trigger::Scheduled);
    let sched = first.scheduled_unix.unwrap();
    assert_eq!(sched % 10, 0);
    assert!(first.started_unix - sched <= 2, "late: {first:?}");
    // One VM failing does not stop the other.
    assert_eq!(first.state, JobState::Partial, "{first:?}");
    let ok = first.vms.iter().find(|v| v.vm == VM).unwrap();
    assert!(ok.ok && ok.point.is_some() && ok.bytes_read > 0, "{ok:?}");
    assert!(ok.bytes_stored > 0);
    let bad = first.vms.iter().find(|v| v.vm == "no-such-vm").unwrap();
    assert!(!bad.ok && bad.error.as_deref().unwrap().contains("no VM named"));
    assert_eq!(first.verified, Some(true));

    // Change 64 KiB and tell the simulator's CBT.
    for b in &mut data[1 << 20..(1 << 20) + 65536] {
        *b = b.wrapping_add(0x5a) ^ 0x11;
    }
    sim.control(&cbt, &format!("{} 65536\n", 1 << 20))
        .await
        .unwrap();
    seed(data.clone()).await;

    // Stop the schedule (an update keeps the plan), then run it now: progress streams,
    // and the second backup is a CBT incremental.
    let p1_idle = with_creds(plan("p1", "0 0 1 1 *", &url, &thumb, repo, false));
    mgmt.admin.apply_plan(&id, &p1_idle).await.unwrap();
    let running = || async {
        let p: JobPage = serde_json::from_value(agent_get("/v1/jobs".into()).await?).ok()?;
        Some(p.records.len())
    };
    // Let a scheduled run that had already started finish.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = running().await;
    let mut events = Vec::new();
    let last = loop {
        match mgmt
            .admin
            .run_now(&id, "p1", |e| events.push(e.clone()))
            .await
        {
            Ok(l) => break l,
            Err(e) if e.to_string().contains("already running") => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let Some(ProgressEvent::Done(second)) = last else {
        panic!("{events:?}")
    };
    assert!(
        matches!(events[0], ProgressEvent::Started { .. }),
        "{events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, ProgressEvent::VmDone(_))));
    assert_eq!(second.trigger, Trigger::Manual);
    let vm2 = second.vms.iter().find(|v| v.vm == VM).unwrap();
    assert!(vm2.ok, "{vm2:?}");
    assert!(
        vm2.incremental,
        "second run should be CBT incremental: {vm2:?}"
    );
    assert!(
        vm2.notes.iter().any(|n| n.contains("65536 bytes changed")),
        "{vm2:?}"
    );
    // Only the chunk holding the change was read (4 MiB chunks; the disk is 8 MiB).
    assert!(vm2.bytes_read <= 4 << 20, "{vm2:?}");
    // The snapshot is always removed.
    let after = vc.vm_info(&vm).await.unwrap();
    assert!(after.snapshots.is_empty(), "{:?}", after.snapshots);

    // --- Collection by cursor: everything once, nothing twice.
    mgmt.admin.collect(&id).await.unwrap();
    let again = mgmt.admin.collect(&id).await.unwrap();
    assert_eq!(again.jobs, 0);
    let jobs = mgmt.admin.jobs(Some(&id), 100).await.unwrap();
    let agent_jobs: JobPage =
        serde_json::from_value(agent_get("/v1/jobs?limit=1000".into()).await.unwrap()).unwrap();
    assert_eq!(jobs.len(), agent_jobs.records.len());
    let seqs: BTreeSet<u64> = jobs.iter().map(|j| j.record.seq).collect();
    assert_eq!(seqs.len(), jobs.len());
    let logs = mgmt.admin.logs(Some(&id), 0, 100_000).await.unwrap();
    let lseqs: Vec<u64> = logs.iter().map(|l| l.entry.seq).collect();
    let uniq: BTreeSet<u64> = lseqs.iter().copied().collect();
    assert_eq!(uniq.len(), lseqs.len(), "duplicate log lines");
    assert_eq!(*lseqs.first().unwrap(), 1);
    assert_eq!(
        *lseqs.last().unwrap() as usize,
        lseqs.len(),
        "gap in log lines"
    );
    assert!(logs
        .iter()
        .any(|l| l.entry.message.contains("backed up to")));

    // --- Reboot: identity and plans kept.
    let cert_before = st["tls"]["sha256"].clone();
    agent = agent.reboot().await;
    let st = wait_for(10, "status after reboot", || agent_get("/v1/status".into())).await;
    assert_eq!(st["registration"]["agent_id"], id.as_str());
    assert_eq!(st["tls"]["sha256"], cert_before);
    let plans = wait_for(5, "plans", || agent_get("/v1/plans".into())).await;
    assert_eq!(plans[0]["plan"]["name"], "p1", "{plans}");

    // --- The management server down: a scheduled plan still runs, and is collected later.
    let p2 = with_creds(plan("p2", "*/5 * * * * *", &url, &thumb, repo, true));
    mgmt.admin.apply_plan(&id, &p2).await.unwrap();
    let (mstate, mport) = mgmt.stop().await;
    let p2_runs = || async {
        let p: JobPage =
            serde_json::from_value(agent_get("/v1/jobs?limit=1000".into()).await?).ok()?;
        let n = p.records.iter().filter(|r| r.plan == "p2").count();
        (n > 0).then_some(n)
    };
    wait_for(60, "p2 ran with the server down", p2_runs).await;
    let mgmt = Mgmt::start(&mstate, mport, true).await;
    mgmt.admin.collect(&id).await.unwrap();
    let jobs = mgmt.admin.jobs(Some(&id), 100).await.unwrap();
    assert!(
        jobs.iter().any(|j| j.record.plan == "p2"),
        "collected later"
    );

    // --- Off across a scheduled time: the missed run happens once, at boot.
    agent = agent.kill().await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    agent = agent.restart().await;
    let missed = wait_for(60, "missed run at boot", || async {
        let p: JobPage =
            serde_json::from_value(agent_get("/v1/jobs?limit=1000".into()).await?).ok()?;
        p.records
            .into_iter()
            .find(|r| r.plan == "p2" && r.trigger == Trigger::Missed)
    })
    .await;
    assert!(missed.scheduled_unix.is_some());
    // Stop p2 and let a running job end before the simulator goes away.
    let mut idle = with_creds(plan("p2", "0 0 1 1 *", &url, &thumb, repo, false));
    idle.plan.run_missed = false;
    mgmt.admin.apply_plan(&id, &idle).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let logs = agent.stderr.lock().unwrap().clone();
    assert!(!logs.contains(&sim.password) || sim.password.len() < 4);
    drop(agent);
    mgmt.stop().await;
    drop(sim);
}
