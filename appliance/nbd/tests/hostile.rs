//! A tiny fake server that breaks the protocol in one way per test. Each case must end in
//! a clear typed error: no panic, no hang.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use std::time::Duration;

use ferry_nbd::proto::{self, opt, rep, reply, Request, BASE_ALLOCATION};
use ferry_nbd::{ClientOptions, NbdClient, NbdError, ProtocolError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SIZE: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
enum Bad {
    GreetingMagic,
    ReplyMagic,
    OversizedData,
    OversizedStatus,
    UnknownHandle,
    StatusPastRange,
    StatusUnknownContext,
    ClosedMidReply,
    OverlappingChunks,
    Silent,
}

async fn opt_reply(s: &mut TcpStream, o: u32, typ: u32, data: &[u8]) {
    s.write_all(&proto::OptReplyHeader::encode(o, typ, data.len() as u32))
        .await
        .unwrap();
    s.write_all(data).await.unwrap();
}

/// A well-behaved handshake, then one bad answer to the first request.
async fn fake_server(bad: Bad) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        if matches!(bad, Bad::GreetingMagic) {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            return;
        }
        s.write_all(&proto::NBDMAGIC.to_be_bytes()).await.unwrap();
        s.write_all(&proto::IHAVEOPT.to_be_bytes()).await.unwrap();
        s.write_all(&3u16.to_be_bytes()).await.unwrap();
        let mut cf = [0u8; 4];
        s.read_exact(&mut cf).await.unwrap();
        loop {
            let mut h = [0u8; 16];
            if s.read_exact(&mut h).await.is_err() {
                return;
            }
            let o = u32::from_be_bytes(h[8..12].try_into().unwrap());
            let n = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let mut data = vec![0u8; n as usize];
            s.read_exact(&mut data).await.unwrap();
            match o {
                opt::STRUCTURED_REPLY => opt_reply(&mut s, o, rep::ACK, &[]).await,
                opt::SET_META_CONTEXT => {
                    let mut p = 7u32.to_be_bytes().to_vec();
                    p.extend_from_slice(BASE_ALLOCATION.as_bytes());
                    opt_reply(&mut s, o, rep::META_CONTEXT, &p).await;
                    opt_reply(&mut s, o, rep::ACK, &[]).await;
                }
                opt::GO => {
                    let mut p = proto::info::EXPORT.to_be_bytes().to_vec();
                    p.extend_from_slice(&SIZE.to_be_bytes());
                    p.extend_from_slice(
                        &(proto::flags::HAS_FLAGS | proto::flags::READ_ONLY).to_be_bytes(),
                    );
                    opt_reply(&mut s, o, rep::INFO, &p).await;
                    opt_reply(&mut s, o, rep::ACK, &[]).await;
                    break;
                }
                _ => opt_reply(&mut s, o, rep::ERR_UNSUP, &[]).await,
            }
        }
        let mut rb = [0u8; 28];
        s.read_exact(&mut rb).await.unwrap();
        let req = Request::parse(&rb).unwrap();
        let h = req.handle;
        let chunk = |flags, typ, handle, len| proto::encode_chunk_header(flags, typ, handle, len);
        let done = reply::FLAG_DONE;
        let out: Vec<u8> = match bad {
            Bad::GreetingMagic => unreachable!(),
            Bad::ReplyMagic => vec![0x55; 20],
            Bad::OversizedData => chunk(done, reply::OFFSET_DATA, h, 1 << 30).to_vec(),
            Bad::OversizedStatus => chunk(done, reply::BLOCK_STATUS, h, 1 << 30).to_vec(),
            Bad::UnknownHandle => {
                let mut v = chunk(done, reply::OFFSET_DATA, h ^ 0xdead, 8 + req.len).to_vec();
                v.extend_from_slice(&req.offset.to_be_bytes());
                v.extend(vec![0u8; req.len as usize]);
                v
            }
            Bad::StatusPastRange | Bad::StatusUnknownContext => {
                let ctx: u32 = if matches!(bad, Bad::StatusUnknownContext) {
                    9
                } else {
                    7
                };
                let mut p = ctx.to_be_bytes().to_vec();
                p.extend_from_slice(&(req.len + 4096).to_be_bytes());
                p.extend_from_slice(&0u32.to_be_bytes());
                let mut v = chunk(done, reply::BLOCK_STATUS, h, p.len() as u32).to_vec();
                v.extend(p);
                v
            }
            Bad::ClosedMidReply => {
                let mut v = chunk(done, reply::OFFSET_DATA, h, 8 + req.len).to_vec();
                v.extend_from_slice(&req.offset.to_be_bytes());
                v.extend(vec![1u8; req.len as usize / 2]);
                v
            }
            Bad::OverlappingChunks => {
                let half = req.len / 2 + 512;
                let mut v = Vec::new();
                for (off, flags) in [
                    (req.offset, 0),
                    (req.offset + u64::from(req.len) - u64::from(half), done),
                ] {
                    v.extend(chunk(flags, reply::OFFSET_DATA, h, 8 + half));
                    v.extend_from_slice(&off.to_be_bytes());
                    v.extend(vec![2u8; half as usize]);
                }
                v
            }
            Bad::Silent => Vec::new(),
        };
        let _ = s.write_all(&out).await;
        if matches!(bad, Bad::Silent) {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        // Close (mid-reply for ClosedMidReply), keeping nothing open.
    });
    format!("nbd://127.0.0.1:{port}/")
}

fn opts() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_millis(1500),
        ..ClientOptions::default()
    }
}

/// Connects to a fake server and runs one read or block status; returns the error.
async fn provoke(bad: Bad, status: bool) -> NbdError {
    let uri = fake_server(bad).await;
    let fut = async {
        let c = NbdClient::connect_uri(&uri, &opts()).await?;
        if status {
            c.block_status(BASE_ALLOCATION, 0, 64 << 10)
                .await
                .map(|_| ())?;
        } else {
            c.read_at(0, vec![0u8; 64 << 10]).await.map(|_| ())?;
        }
        // A second request on the broken connection fails with the first error.
        let again = c.read_at(0, vec![0u8; 512]).await.unwrap_err();
        assert!(matches!(again, NbdError::Dead(_)), "{again}");
        Ok::<(), NbdError>(())
    };
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Err(_) => panic!("{bad:?}: the client hung"),
        Ok(Ok(())) => panic!("{bad:?}: the client accepted a broken reply"),
        Ok(Err(e)) => e,
    }
}

#[tokio::test]
async fn wrong_magic_in_greeting() {
    let e = provoke(Bad::GreetingMagic, false).await;
    assert!(
        matches!(
            e.protocol(),
            Some(ProtocolError::BadMagic {
                what: "server greeting",
                ..
            })
        ),
        "{e}"
    );
}

#[tokio::test]
async fn wrong_magic_in_reply() {
    let e = provoke(Bad::ReplyMagic, false).await;
    assert!(
        matches!(
            e.protocol(),
            Some(ProtocolError::BadMagic { what: "reply", .. })
        ),
        "{e}"
    );
}

#[tokio::test]
async fn oversized_replies() {
    let e = provoke(Bad::OversizedData, false).await;
    assert!(
        matches!(e.protocol(), Some(ProtocolError::Oversized { .. })),
        "{e}"
    );
    let e = provoke(Bad::OversizedStatus, true).await;
    assert!(
        matches!(e.protocol(), Some(ProtocolError::Oversized { .. })),
        "{e}"
    );
}

#[tokio::test]
async fn reply_for_an_unknown_handle() {
    let e = provoke(Bad::UnknownHandle, false).await;
    assert!(
        matches!(e.protocol(), Some(ProtocolError::UnknownHandle(_))),
        "{e}"
    );
}

#[tokio::test]
async fn block_status_for_the_wrong_range_or_context() {
    let e = provoke(Bad::StatusPastRange, true).await;
    assert!(
        matches!(
            e.protocol(),
            Some(ProtocolError::BlockStatus { context: 7, .. })
        ),
        "{e}"
    );
    let e = provoke(Bad::StatusUnknownContext, true).await;
    assert!(
        matches!(
            e.protocol(),
            Some(ProtocolError::BlockStatus { context: 9, .. })
        ),
        "{e}"
    );
}

#[tokio::test]
async fn overlapping_read_chunks() {
    let e = provoke(Bad::OverlappingChunks, false).await;
    assert!(
        matches!(e.protocol(), Some(ProtocolError::ChunkRange { .. })),
        "{e}"
    );
}

#[tokio::test]
async fn connection_closed_mid_reply() {
    let e = provoke(Bad::ClosedMidReply, false).await;
    assert!(matches!(e.root(), NbdError::Closed { .. }), "{e}");
}

#[tokio::test]
async fn silent_server_times_out() {
    let e = provoke(Bad::Silent, false).await;
    assert!(matches!(e.root(), NbdError::Timeout { .. }), "{e}");
}
