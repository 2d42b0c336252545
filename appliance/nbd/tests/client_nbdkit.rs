//! The client against real `nbdkit`: file and memory plugins.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::process::Command;

use common::*;
use ferry_archive::{BlockSource, ExtentKind};
use ferry_nbd::proto::BASE_ALLOCATION;
use ferry_nbd::{ClientOptions, NbdClient, NbdSource};

const SIZE: u64 = 20 << 20;

#[tokio::test]
async fn file_plugin_reads_and_maps_like_nbdinfo() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    let content = make_disk(&raw, SIZE, 5);
    let file_arg = format!("file={}", raw.display());
    let peer = nbdkit(dir.path(), &["-r", "file", &file_arg]);

    let client = NbdClient::connect_uri(&peer.uri, &ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(read_all(&client).await, content);
    let ours = client.block_status(BASE_ALLOCATION, 0, SIZE).await.unwrap();
    assert_eq!(ours, nbdinfo_map(&peer.uri, None));
    // Holes of the sparse file show up as hole+zero.
    assert!(ours.iter().any(|e| e.flags == 3));
    client.disconnect().await;
}

#[tokio::test]
async fn memory_plugin_as_a_block_source() {
    need("nbdcopy");
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    let content = make_disk(&raw, SIZE, 9);
    let size_arg = format!("size={SIZE}");
    let peer = nbdkit(dir.path(), &["memory", &size_arg]);
    // Fill the RAM disk through NBD; zero runs become holes in the plugin.
    run(Command::new("nbdcopy").arg(&raw).arg(&peer.uri));

    let src = NbdSource::connect(&peer.uri, None, ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(src.size(), SIZE);
    assert!(src.changed().await.unwrap().is_none());
    let alloc = src.allocation(0, SIZE).await.unwrap().unwrap();
    assert_eq!(alloc.iter().map(|e| e.len).sum::<u64>(), SIZE);
    // Every byte in a Zero extent really is zero, and the data extents hold the file.
    for e in &alloc {
        let want = &content[e.offset as usize..(e.offset + e.len) as usize];
        if e.kind == ExtentKind::Zero {
            assert!(want.iter().all(|b| *b == 0));
        }
    }
    let theirs = nbdinfo_map(&peer.uri, None);
    let ours = src
        .client()
        .block_status(BASE_ALLOCATION, 0, SIZE)
        .await
        .unwrap();
    assert_eq!(ours, theirs);
    assert!(alloc.iter().any(|e| e.kind == ExtentKind::Zero));
    let mut all = Vec::new();
    for e in &alloc {
        all.extend(
            src.read_at(e.offset, vec![0u8; e.len as usize])
                .await
                .unwrap(),
        );
    }
    assert!(all == content);
    src.close().await;
}
