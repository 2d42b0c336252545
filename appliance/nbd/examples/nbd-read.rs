//! Reads a whole NBD export with holes skipped (via `base:allocation`) and prints the rate.
//!
//! `nbd-read URI [--connections N] [--request-size BYTES] [--in-flight N] [--threads N]`
//! Used by `tests/bench/nbd.sh` to compare with `nbdcopy URI null:`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use ferry_nbd::proto::{BASE_ALLOCATION, STATE_ZERO};
use ferry_nbd::{ClientOptions, NbdClient};
use futures::stream::{self, StreamExt, TryStreamExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, Error> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a number").into()),
        None => Ok(default),
    }
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    // `--threads 1` runs everything on one thread (no cross-thread wake-ups).
    let threads: usize = arg(&args, "--threads", 0)?;
    let rt = match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    rt.block_on(run(args))
}

async fn run(args: Vec<String>) -> Result<(), Error> {
    let uri = args
        .get(1)
        .filter(|a| !a.starts_with("--"))
        .ok_or("usage: nbd-read URI [--connections N] [--request-size BYTES] [--in-flight N]")?;
    let opts = ClientOptions {
        connections: arg(&args, "--connections", 4usize)?,
        max_request: arg(&args, "--request-size", 512u32 << 10)?,
        ..ClientOptions::default()
    };
    let in_flight: usize = arg(&args, "--in-flight", 64)?;
    let start = Instant::now();
    let client = NbdClient::connect_uri(uri, &opts).await?;
    let size = client.size();
    let req = u64::from(opts.max_request);

    // Map first (in 1 GiB windows, as the backup engine does), then read only data runs.
    let mut map = Vec::new();
    let mut pos = 0;
    while pos < size {
        let n = (1u64 << 30).min(size - pos);
        map.extend(client.block_status(BASE_ALLOCATION, pos, n).await?);
        pos += n;
    }
    let mut reqs = Vec::new();
    for e in map.iter().filter(|e| e.flags & STATE_ZERO == 0) {
        let mut off = e.offset;
        while off < e.offset + e.len {
            let n = req.min(e.offset + e.len - off);
            reqs.push((off, n as usize));
            off += n;
        }
    }
    let data: u64 = reqs.iter().map(|r| r.1 as u64).sum();

    // Buffers are recycled so the measurement is of the transport, not of the allocator.
    let pool: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let client = &client;
    let checksum = stream::iter(reqs)
        .map(|(off, n)| {
            let pool = pool.clone();
            async move {
                let mut buf = pool.lock().map_err(|_| "pool")?.pop().unwrap_or_default();
                buf.resize(n, 0);
                let buf = client.read_at(off, buf).await?;
                // Touch the data so nothing is optimised away.
                let x = buf
                    .iter()
                    .step_by(4096)
                    .fold(0u64, |a, b| a.wrapping_add(u64::from(*b)));
                pool.lock().map_err(|_| "pool")?.push(buf);
                Ok::<u64, Error>(x)
            }
        })
        .buffer_unordered(in_flight)
        .try_fold(0u64, |a, x| async move { Ok(a.wrapping_add(x)) })
        .await?;
    let secs = start.elapsed().as_secs_f64();
    let conns = client.connections();
    println!(
        "size={size} data={data} connections={conns} seconds={secs:.3} export_MBps={:.1} data_MBps={:.1} checksum={checksum:x}",
        size as f64 / secs / 1e6,
        data as f64 / secs / 1e6
    );
    Ok(())
}
