//! The client against real `qemu-nbd`: raw, qcow2 and vmdk exports, a dirty bitmap, TCP.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

mod common;

use std::process::Command;

use common::*;
use ferry_archive::BlockSource;
use ferry_nbd::proto::{BASE_ALLOCATION, STATE_DIRTY};
use ferry_nbd::{ClientOptions, NbdClient, NbdSource, NbdUri};

const SIZE: u64 = 24 << 20;

async fn check_export(uri: &str, content: &[u8]) {
    let client = NbdClient::connect_uri(uri, &ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(client.size(), content.len() as u64);
    assert!(client.info().read_only());
    let bytes = read_all(&client).await;
    assert!(
        bytes == content,
        "bytes read from {uri} differ from the file"
    );
    let ours = client
        .block_status(BASE_ALLOCATION, 0, client.size())
        .await
        .unwrap();
    let theirs = nbdinfo_map(uri, None);
    assert_eq!(
        ours, theirs,
        "extent map of {uri} differs from nbdinfo --map"
    );
    assert!(
        ours.iter().any(|e| e.flags & 2 != 0),
        "no zero extents seen in {uri}"
    );
    assert!(
        ours.iter().any(|e| e.flags == 0),
        "no data extents seen in {uri}"
    );
    client.disconnect().await;
}

#[tokio::test]
async fn raw_qcow2_and_vmdk_exports_read_and_map_like_nbdinfo() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    let content = make_disk(&raw, SIZE, 7);
    for fmt in ["raw", "qcow2", "vmdk"] {
        let file = if fmt == "raw" {
            raw.clone()
        } else {
            need("qemu-img");
            let f = dir.path().join(format!("d.{fmt}"));
            run(Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", fmt])
                .arg(&raw)
                .arg(&f));
            f
        };
        let peer = qemu_nbd(dir.path(), &file, fmt, &[]);
        check_export(&peer.uri, &content).await;
    }
}

#[tokio::test]
async fn tcp_uri_list_info_and_multi_conn() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    let content = make_disk(&raw, SIZE, 3);
    let peer = qemu_nbd_tcp(&raw, "raw", &[]);
    let uri = NbdUri::parse(&peer.uri).unwrap();
    let opts = ClientOptions::default();

    let list = ferry_nbd::list_exports(&uri, &opts).await.unwrap();
    assert_eq!(
        list.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["disk"]
    );
    let info = ferry_nbd::export_info(&uri, &opts).await.unwrap();
    assert_eq!(info.size, SIZE);
    assert!(info.block_max >= 1 << 20);

    let client = NbdClient::connect(&uri, &opts).await.unwrap();
    if client.info().can_multi_conn() {
        assert_eq!(client.connections(), 4);
    } else {
        assert_eq!(client.connections(), 1);
    }
    // Many reads in flight at once on the connection(s), answered out of order or not.
    let reads = (0..64u64).map(|i| {
        let c = &client;
        async move {
            let off = (i * 389 * 1024) % (SIZE - 70_000);
            (off, c.read_at(off, vec![0u8; 70_000]).await.unwrap())
        }
    });
    for (off, b) in futures::future::join_all(reads).await {
        assert!(b[..] == content[off as usize..off as usize + 70_000]);
    }
    // Reads past the end are refused locally with a typed error.
    assert!(matches!(
        client.read_at(SIZE - 10, vec![0; 11]).await,
        Err(ferry_nbd::NbdError::OutOfRange { .. })
    ));
    // A missing export is refused by the server.
    let bad = NbdUri::parse(&peer.uri.replace("/disk", "/nope")).unwrap();
    let e = NbdClient::connect(&bad, &opts).await.unwrap_err();
    assert!(matches!(e, ferry_nbd::NbdError::Refused { .. }), "{e}");
    client.disconnect().await;
}

#[tokio::test]
async fn dirty_bitmap_becomes_the_changed_map() {
    need("qemu-img");
    need("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    make_disk(&raw, SIZE, 11);
    let q = dir.path().join("d.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&q));
    run(Command::new("qemu-img")
        .args(["bitmap", "--add"])
        .arg(&q)
        .arg("b0"));
    run(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 3M 128k",
            "-c",
            "write -P 0x11 17M 1M",
        ])
        .arg(&q));
    let peer = qemu_nbd(dir.path(), &q, "qcow2", &["-B", "b0"]);

    let src = NbdSource::connect(&peer.uri, Some("b0"), ClientOptions::default())
        .await
        .unwrap();
    let changed = src.changed().await.unwrap().unwrap();
    assert_eq!(
        changed.ranges(),
        &[(3 << 20)..(3 << 20) + (128 << 10), (17 << 20)..(18 << 20)]
    );

    let ours = src
        .client()
        .block_status("qemu:dirty-bitmap:b0", 0, SIZE)
        .await
        .unwrap();
    let theirs = nbdinfo_map(&peer.uri, Some("qemu:dirty-bitmap:b0"));
    assert_eq!(ours, theirs);
    assert!(ours.iter().any(|e| e.flags & STATE_DIRTY != 0));

    // Allocation still comes from base:allocation next to the bitmap.
    let alloc = src.allocation(0, SIZE).await.unwrap().unwrap();
    assert_eq!(alloc.iter().map(|e| e.len).sum::<u64>(), SIZE);
    let data = src.read_at(3 << 20, vec![0; 4096]).await.unwrap();
    assert!(data.iter().all(|b| *b == 0x5a));

    // Asking for a bitmap the server does not export is a clear error.
    let e = NbdSource::connect(&peer.uri, Some("nope"), ClientOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ferry_nbd::NbdError::Unsupported(_)), "{e}");
    src.close().await;
}
