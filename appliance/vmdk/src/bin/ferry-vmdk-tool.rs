//! `ferry-vmdk-tool`: a small driver of the crate for benchmarks and manual checks.
//!
//! ```text
//! ferry-vmdk-tool read  IN.vmdk OUT.raw            # whole disk to a sparse raw file
//! ferry-vmdk-tool write IN.raw OUT.vmdk [LEVEL]    # raw to streamOptimized
//! ferry-vmdk-tool map   IN.vmdk                    # allocation map
//! ```

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use ferry_archive::{BlockSource, ExtentKind, FileSource};
use ferry_vmdk::{write_stream_optimized, VmdkSource, WriteOptions};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const CHUNK: u64 = 8 << 20;

async fn read_cmd(input: &Path, output: &Path) -> Res<()> {
    let src = Arc::new(VmdkSource::open_path(input).await?);
    let size = src.size();
    let out = Arc::new(std::fs::File::create(output)?);
    out.set_len(size)?;
    let map = src.allocation(0, size).await?.unwrap_or_default();
    // Reads and inflates run concurrently; one thread writes, in runs of non-zero grains
    // (parallel pwrites to one file contend on its inode lock).
    let mut jobs = tokio::task::JoinSet::new();
    let inflight = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
    let write = |off: u64, buf: &[u8]| -> std::io::Result<()> {
        let g = 64 << 10;
        let mut run: Option<usize> = None;
        for (i, chunk) in buf.chunks(g).enumerate() {
            let nz = chunk.iter().any(|&b| b != 0);
            match (nz, run) {
                (true, None) => run = Some(i * g),
                (false, Some(s)) => {
                    out.write_all_at(&buf[s..i * g], off + s as u64)?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run {
            out.write_all_at(&buf[s..], off + s as u64)?;
        }
        Ok(())
    };
    for e in map.into_iter().filter(|e| e.kind == ExtentKind::Data) {
        let mut off = e.offset;
        while off < e.offset + e.len {
            let n = CHUNK.min(e.offset + e.len - off);
            while jobs.len() >= inflight {
                if let Some(r) = jobs.join_next().await {
                    let (o, b): (u64, Vec<u8>) = r??;
                    write(o, &b)?;
                }
            }
            let src = src.clone();
            jobs.spawn(async move {
                let buf = src.read_at(off, vec![0u8; n as usize]).await?;
                Res::Ok((off, buf))
            });
            off += n;
        }
    }
    while let Some(r) = jobs.join_next().await {
        let (o, b): (u64, Vec<u8>) = r??;
        write(o, &b)?;
    }
    Ok(())
}

async fn write_cmd(input: &Path, output: &Path, level: Option<u32>) -> Res<()> {
    let src = FileSource::open(input)?;
    let mut opts = WriteOptions {
        extent_name: output
            .file_name()
            .map_or("disk.vmdk".into(), |n| n.to_string_lossy().to_string()),
        ..WriteOptions::default()
    };
    if let Some(l) = level {
        opts.level = l;
    }
    let f = tokio::fs::File::create(output).await?;
    let mut w = tokio::io::BufWriter::with_capacity(4 << 20, f);
    let st = write_stream_optimized(&src, &mut w, &opts).await?;
    eprintln!(
        "{} bytes, {} grains stored, {} bytes written",
        st.disk_size, st.grains_stored, st.bytes_written
    );
    Ok(())
}

async fn map_cmd(input: &Path) -> Res<()> {
    let v = ferry_vmdk::Vmdk::open_path(input).await?;
    println!("{} bytes, {} layer(s)", v.size(), v.chain_len());
    for r in v.map(0, v.size()).await? {
        println!(
            "{:>16} {:>16} {:?} depth {}",
            r.offset, r.len, r.kind, r.depth
        );
    }
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["read", i, o] => rt.block_on(read_cmd(Path::new(i), Path::new(o))),
        ["write", i, o] => rt.block_on(write_cmd(Path::new(i), Path::new(o), None)),
        ["write", i, o, l] => rt.block_on(write_cmd(Path::new(i), Path::new(o), Some(l.parse()?))),
        ["map", i] => rt.block_on(map_cmd(Path::new(i))),
        _ => Err("usage: ferry-vmdk-tool read IN.vmdk OUT.raw | write IN.raw OUT.vmdk [LEVEL] | map IN.vmdk".into()),
    }
}
