//! Full VM backup through the vSphere client, timed: the benchmark half of
//! `tests/bench/vsphere.sh`.
//!
//! `vsphere-bench URL THUMBPRINT VM REPO_DIR plain|cbt`, credentials in
//! `FERRY_VSPHERE_USER` and `FERRY_VSPHERE_PASSWORD`. `plain` reads every byte; `cbt`
//! enables CBT and uses its allocation map (`QueryChangedDiskAreas` with `*`).
//! Prints `seconds bytes_fetched logical_bytes stored_bytes`.

use std::sync::Arc;
use std::time::Instant;

use ferry_vsphere::{
    backup_vm, Client, ConnectOptions, Credentials, Trust, VmBackupOptions, VmSelector,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, thumbprint, vm, repo_dir, mode] = args.as_slice() else {
        return Err("usage: vsphere-bench URL THUMBPRINT VM REPO_DIR plain|cbt".into());
    };
    let creds = Credentials::from_env("FERRY_VSPHERE_USER", "FERRY_VSPHERE_PASSWORD")?;
    let client = Client::connect(&ConnectOptions::new(
        url,
        creds,
        Trust::Thumbprint(thumbprint.clone()),
    ))
    .await?;
    let store = ferry_storage::open_store(repo_dir)?;
    let repo = match ferry_archive::Repository::open(store.clone()).await {
        Ok(r) => r,
        Err(_) => ferry_archive::Repository::init(store, 4 << 20, 3).await?,
    };
    let mut opts = VmBackupOptions::new(VmSelector::Name(vm.clone()));
    opts.in_flight = 8;
    opts.use_cbt = mode == "cbt";
    opts.enable_cbt = mode == "cbt";
    let t = Instant::now();
    let r = backup_vm(
        &client,
        &repo,
        &opts,
        Arc::new(ferry_archive::Progress::default()),
    )
    .await?;
    let secs = t.elapsed().as_secs_f64();
    let stats = r.manifest.stats();
    println!(
        "{secs:.3} {} {} {}",
        r.bytes_fetched,
        r.manifest.total_size(),
        stats.stored
    );
    client.logout().await?;
    Ok(())
}
