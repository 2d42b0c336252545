//! `ferry backup --vcenter` against the govmomi vSphere simulator (tests/vcsim): a 2-disk VM
//! backed up through snapshot + datastore HTTPS, restored with equal bytes, and refused with
//! a clear error when the pinned thumbprint does not match.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use ferry_testkit::vcsim::Vcsim;
use ferry_vsphere::job::monolithic_flat_descriptor;
use ferry_vsphere::{
    Client, ConnectOptions, Credentials, Datastore, DatastorePath, Trust, VmSelector,
};
use sha2::{Digest as _, Sha256};

const VM: &str = "DC0_H0_VM0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_backup_and_restore_through_the_cli() {
    let sim = Vcsim::start(&["-disks", "8M,4M"]).await.unwrap();
    let (url, thumb) = (sim.url.clone(), sim.thumbprint.clone());

    // Seed both disks with known bytes through /folder, as monolithicFlat pairs.
    let c = Client::connect(&ConnectOptions::new(
        &url,
        Credentials::new(&sim.user, &sim.password),
        Trust::Thumbprint(thumb.clone()),
    ))
    .await
    .unwrap();
    let info = c
        .vm_info(&c.find_vm(&VmSelector::Name(VM.into())).await.unwrap())
        .await
        .unwrap();
    let ds = Datastore::new(&c, &info.datacenter, 4);
    let mut shas = Vec::new();
    for (i, d) in info.disks.iter().enumerate() {
        let mut data = vec![0u8; d.capacity as usize];
        ferry_testkit::Rng::new(i as u64 + 7).fill(&mut data[..d.capacity as usize / 2]);
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
        let desc = monolithic_flat_descriptor(data.len() as u64, &flat);
        ds.put_bytes(&p, desc.into_bytes()).await.unwrap();
        shas.push(hex::encode(Sha256::digest(&data)));
    }

    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let creds = dir.path().join("vc.cred");
    std::fs::write(&creds, format!("{}\n{}\n", sim.user, sim.password)).unwrap();
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let run = |args: Vec<String>| {
        std::process::Command::new(ferry)
            .arg("--repo")
            .arg(&repo)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(vec!["repo".into(), "init".into()]).status.success());
    let backup = |thumbprint: &str| {
        run(vec![
            "--json".into(),
            "backup".into(),
            "--vcenter".into(),
            url.clone(),
            "--vm".into(),
            VM.into(),
            "--thumbprint".into(),
            thumbprint.into(),
            "--credentials".into(),
            creds.to_string_lossy().into_owned(),
        ])
    };
    let o = backup(&thumb);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r[0]["ok"], true, "{r}");
    let disks = r[0]["point"]["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2);
    // The password never reaches the output.
    assert!(!String::from_utf8_lossy(&o.stdout).contains(&sim.password));
    assert!(!String::from_utf8_lossy(&o.stderr).contains(&sim.password));

    for (i, want) in shas.iter().enumerate() {
        let out = dir.path().join(format!("disk{i}.raw"));
        let o = run(vec![
            "restore".into(),
            "latest".into(),
            "--group".into(),
            VM.into(),
            "--disk".into(),
            i.to_string(),
            "--target".into(),
            out.to_string_lossy().into_owned(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            &hex::encode(Sha256::digest(std::fs::read(&out).unwrap())),
            want
        );
    }

    // Back into vSphere: as a new VM, and one disk to a datastore path. The bytes read
    // back through the datastore equal the source.
    let vc = |extra: &[&str]| {
        let mut a: Vec<String> = vec![
            "--json".into(),
            "restore".into(),
            "latest".into(),
            "--group".into(),
            VM.into(),
            "--vcenter".into(),
            url.clone(),
            "--thumbprint".into(),
            thumb.clone(),
            "--credentials".into(),
            creds.to_string_lossy().into_owned(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        run(a)
    };
    let o = vc(&["--new-vm", "cli-restored", "--datastore", "LocalDS_0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["disks"].as_array().unwrap().len(), 2, "{r}");
    let o = vc(&["--disk", "1", "--to-datastore", "[LocalDS_0] loose/d1.vmdk"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let new = c
        .vm_info(
            &c.find_vm(&VmSelector::Name("cli-restored".into()))
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    let mut paths: Vec<String> = new.disks.iter().map(|d| d.file_name.clone()).collect();
    paths.push("[LocalDS_0] loose/d1.vmdk".into());
    let wants = [&shas[0], &shas[1], &shas[1]];
    for (p, want) in paths.iter().zip(wants) {
        let p = DatastorePath::parse(p).unwrap();
        let v = ferry_vmdk::Vmdk::open(std::sync::Arc::new(ds.resolver(&p)), &p.path)
            .await
            .unwrap();
        let mut buf = vec![0u8; v.size() as usize];
        v.read_at(0, &mut buf).await.unwrap();
        assert_eq!(&hex::encode(Sha256::digest(&buf)), want, "{p}");
    }
    // Without a destination, a clear usage error.
    let o = vc(&[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--new-vm"));

    // A certificate that does not match the pin is refused, and no restore point appears.
    let wrong = "00".repeat(32);
    let o = backup(&wrong);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.to_lowercase().contains("thumbprint"), "{err}");
    let list = run(vec!["--json".into(), "list".into()]);
    let points: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(points.as_array().unwrap().len(), 1);
    drop(sim);
}
