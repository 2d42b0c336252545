//! Drives the real server session (handshake and transmission) over an in-memory client,
//! for the fuzz target and the property tests below.

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use ferry_storage::LocalStore;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::*;

/// Size of the fuzzed export: five 1 MiB chunks and a short tail.
pub const SIZE: u64 = 5 * (1 << 20) + 1234;
/// Bytes of the server's answers kept for inspection.
const KEEP: usize = 1 << 20;

/// A client that sends `data` then hangs up, and swallows whatever the server writes.
struct Feed {
    data: Vec<u8>,
    pos: usize,
    out: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Feed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.data.len() - self.pos);
        let from = self.pos;
        buf.put_slice(&self.data[from..from + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Feed {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let keep = buf.len().min(KEEP.saturating_sub(out.len()));
        out.extend_from_slice(&buf[..keep]);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A repository whose directory is gone once created: every chunk fetch fails, so a
/// read of a data chunk takes the server's I/O error path.
fn repo(rt: &tokio::runtime::Runtime) -> Option<Repository> {
    static REPO: OnceLock<Option<Repository>> = OnceLock::new();
    REPO.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ferry-nbd-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(LocalStore::new(dir.clone()));
        let r = rt.block_on(Repository::init(store, 1 << 20, 1)).ok();
        let _ = std::fs::remove_dir_all(&dir);
        r
    })
    .clone()
}

/// Runs the real handshake and transmission phase of one session, with `data` as
/// everything the client sends, on an export "disk0" of [`SIZE`] bytes whose chunk 1
/// holds data and the rest are holes. Returns the session's outcome and the first
/// MiB the server wrote.
pub fn session(data: &[u8]) -> (Result<(), NbdError>, Vec<u8>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return (Ok(()), Vec::new());
    };
    let Some(repo) = repo(&rt) else {
        return (Ok(()), Vec::new());
    };
    let cs = 1u32 << 20;
    let mut entries = vec![ZERO_DIGEST; Index::chunk_count(SIZE, cs) as usize];
    entries[1] = [0xab; 32];
    let export = Arc::new(Export {
        repo,
        index: Index {
            disk_size: SIZE,
            chunk_size: cs,
            entries,
        },
        name: "disk0".into(),
        description: "fuzzed".into(),
        cache: ChunkCache {
            cap: 4,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        },
    });
    let opts = Arc::new(ServeOptions {
        tls: None,
        timeout: Duration::from_secs(5),
        max_in_flight_bytes: 8 << 20,
        ..ServeOptions::default()
    });
    let out = Arc::new(Mutex::new(Vec::new()));
    let io = Box::new(Feed {
        data: data.to_vec(),
        pos: 0,
        out: out.clone(),
    });
    let r = rt.block_on(super::session(io, export, opts));
    let written = std::mem::take(&mut *out.lock().unwrap_or_else(|e| e.into_inner()));
    (r, written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{cmd, errno, opt, reply};
    use proptest::prelude::*;

    fn hello() -> Vec<u8> {
        (proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES)
            .to_be_bytes()
            .to_vec()
    }

    /// A client that negotiates structured replies and `base:allocation`, then GO.
    fn negotiated() -> Vec<u8> {
        let mut d = hello();
        d.extend(proto::encode_option(opt::STRUCTURED_REPLY, &[]));
        d.extend(proto::encode_option(
            opt::SET_META_CONTEXT,
            &proto::encode_meta_query("disk0", &[proto::BASE_ALLOCATION.to_string()]),
        ));
        d.extend(proto::encode_option(
            opt::GO,
            &proto::encode_go("", &[proto::info::NAME]),
        ));
        d
    }

    fn request(typ: u16, flags: u16, offset: u64, len: u32) -> [u8; 28] {
        proto::encode_request(flags, typ, 7, offset, len)
    }

    #[test]
    fn harness_reaches_transmission() {
        let mut d = negotiated();
        d.extend(request(cmd::READ, 0, 0, 4096));
        d.extend(request(cmd::BLOCK_STATUS, 0, 0, 2 << 20));
        d.extend(request(cmd::READ, 0, 1 << 20, 512));
        d.extend(request(cmd::DISC, 0, 0, 0));
        let (r, out) = session(&d);
        assert!(r.is_ok(), "{r:?}");
        // The hole read comes back as an OFFSET_HOLE chunk for handle 7.
        let hole = proto::encode_chunk_header(reply::FLAG_DONE, reply::OFFSET_HOLE, 7, 12);
        assert!(out.windows(hole.len()).any(|w| w == hole));
        // The data chunk cannot be fetched: EIO, and the session goes on to DISC.
        let eio = proto::encode_error_payload(errno::EIO, "reading the restore point failed");
        assert!(out.windows(eio.len()).any(|w| w == eio));
        assert!(out.len() > 100);
    }

    #[test]
    fn truncated_sessions_end_cleanly() {
        let mut d = negotiated();
        d.extend(request(cmd::READ, 0, SIZE - 10, 10));
        for cut in 0..d.len() {
            let _ = session(&d[..cut]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_client_streams_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = session(&data);
        }

        #[test]
        fn random_requests_after_go_never_panic(
            reqs in proptest::collection::vec((any::<u16>(), 0u16..12, any::<u64>(), any::<u32>()), 0..12),
            near_end in any::<bool>(),
        ) {
            let mut d = negotiated();
            for (flags, typ, offset, len) in reqs {
                // Keep some requests in range, where the interesting answers are.
                let (offset, len) = if near_end {
                    (offset % (SIZE + 1), len % (4 << 20))
                } else {
                    (offset, len)
                };
                if typ != cmd::WRITE {
                    d.extend(request(typ, flags, offset, len));
                }
            }
            let _ = session(&d);
        }

        #[test]
        fn random_options_never_panic(
            opts in proptest::collection::vec((0u32..12, proptest::collection::vec(any::<u8>(), 0..64)), 0..8),
        ) {
            let mut d = hello();
            for (o, data) in opts {
                d.extend(proto::encode_option(o, &data));
            }
            let _ = session(&d);
        }
    }
}
