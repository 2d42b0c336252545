//! The read-only NBD server: one disk of one restore point as an export.
//!
//! Reads fetch and verify chunks from the repository on demand, through a small cache that
//! also merges concurrent fetches of the same chunk. `base:allocation` is answered from the
//! index (zero chunks are holes), so clients such as `nbdcopy` and `qemu-img` skip them.
//! Writes, trims, reads past the end and unknown commands get the NBD error the protocol
//! prescribes, and the session goes on. Every client runs in its own task; a failing client
//! never stops the server.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_archive::lock::{LockKind, RepoLock};
use ferry_archive::restore::fetch_chunk;
use ferry_archive::{ArchiveError, Digest, Index, Manifest, Repository, ZERO_DIGEST};
use ferry_storage::StoreError;
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::error::{NbdError, ProtocolError};
use crate::io::{self, BoxIo};
use crate::proto::{self, cmd, errno, flags, opt, rep, reply, Request};
use crate::tls::ServerTls;

/// Largest read a client may send (the protocol's customary limit).
pub const MAX_REQUEST: u32 = 32 << 20;
const BASE_ALLOCATION_ID: u32 = 1;

type Slot = Arc<OnceCell<Arc<Vec<u8>>>>;

/// Decoded chunks, keyed by digest, evicted oldest first.
struct ChunkCache {
    cap: usize,
    inner: Mutex<(HashMap<Digest, Slot>, VecDeque<Digest>)>,
}

impl ChunkCache {
    fn cell(&self, d: Digest) -> Slot {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *g;
        if let Some(c) = map.get(&d) {
            return c.clone();
        }
        let c = Arc::new(OnceCell::new());
        map.insert(d, c.clone());
        order.push_back(d);
        while order.len() > self.cap {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
        c
    }
}

/// One disk of a restore point, ready to serve.
pub struct Export {
    repo: Repository,
    index: Index,
    name: String,
    description: String,
    cache: ChunkCache,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("size", &self.index.disk_size)
            .finish()
    }
}

impl Export {
    /// Loads the index of disk `disk` of `manifest`. The export is named after the disk.
    pub async fn open(
        repo: Repository,
        manifest: &Manifest,
        disk: usize,
    ) -> Result<Export, NbdError> {
        let index = repo
            .load_index(manifest, disk)
            .await
            .map_err(|e| NbdError::Archive(e.to_string()))?;
        Export::new(repo, manifest, disk, index)
    }

    /// Uses an index the caller already loaded (and checked) with `Repository::load_index`.
    pub fn new(
        repo: Repository,
        manifest: &Manifest,
        disk: usize,
        index: Index,
    ) -> Result<Export, NbdError> {
        let d = manifest.disks.get(disk).ok_or_else(|| {
            NbdError::Invalid(format!("restore point {} has no disk {disk}", manifest.id))
        })?;
        if d.size != index.disk_size {
            return Err(NbdError::Invalid(format!(
                "index of disk {disk} does not match the manifest"
            )));
        }
        Ok(Export {
            repo,
            index,
            name: d.name.clone(),
            description: format!(
                "Ferry restore point {} disk {} ({})",
                manifest.id, disk, d.name
            ),
            cache: ChunkCache {
                cap: 16,
                inner: Mutex::new((HashMap::new(), VecDeque::new())),
            },
        })
    }

    /// Renames the export (clients may also ask for the default name "").
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Sets how many decoded chunks the cache holds (default 16).
    pub fn with_cache_chunks(mut self, n: usize) -> Self {
        self.cache.cap = n.max(1);
        self
    }

    /// Export name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.index.disk_size
    }

    fn chunk_size(&self) -> u64 {
        u64::from(self.index.chunk_size)
    }

    async fn chunk(&self, i: usize) -> Result<Arc<Vec<u8>>, NbdError> {
        let (_, len) = self.index.chunk_range(i);
        let digest = self.index.entries[i];
        let cell = self.cache.cell(digest);
        let data = cell
            .get_or_try_init(|| async {
                fetch_chunk(&self.repo, digest, len)
                    .await
                    .map(Arc::new)
                    .map_err(|e| NbdError::Archive(e.to_string()))
            })
            .await?;
        Ok(data.clone())
    }

    /// The bytes of `[offset, offset+len)`, or `None` when they are all in zero chunks.
    async fn read(&self, offset: u64, len: u32) -> Result<Option<Vec<u8>>, NbdError> {
        let cs = self.chunk_size();
        let end = offset + u64::from(len);
        let first = (offset / cs) as usize;
        let last = ((end - 1) / cs) as usize;
        if (first..=last).all(|i| self.index.entries[i] == ZERO_DIGEST) {
            return Ok(None);
        }
        let mut out = vec![0u8; len as usize];
        let fetches = (first..=last)
            .filter(|&i| self.index.entries[i] != ZERO_DIGEST)
            .map(|i| async move { self.chunk(i).await.map(|d| (i, d)) });
        for r in futures::future::join_all(fetches).await {
            let (i, data) = r?;
            let cstart = i as u64 * cs;
            let from = offset.max(cstart);
            let to = end.min(cstart + data.len() as u64);
            out[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&data[(from - cstart) as usize..(to - cstart) as usize]);
        }
        Ok(Some(out))
    }

    /// `base:allocation` descriptors for `[offset, offset+len)`: zero chunks are holes.
    fn allocation(&self, offset: u64, len: u32, one: bool) -> Vec<(u32, u32)> {
        let cs = self.chunk_size();
        let end = offset + u64::from(len);
        let mut out: Vec<(u32, u32)> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let i = (pos / cs) as usize;
            let next = ((i as u64 + 1) * cs).min(end);
            let status = if self.index.entries[i] == ZERO_DIGEST {
                proto::STATE_HOLE | proto::STATE_ZERO
            } else {
                0
            };
            // Lengths fit: the whole request is at most u32::MAX bytes.
            let n = (next - pos) as u32;
            match out.last_mut() {
                Some(l) if l.1 == status => l.0 += n,
                _ => {
                    if one && !out.is_empty() {
                        break;
                    }
                    out.push((n, status));
                }
            }
            pos = next;
        }
        out
    }
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// TLS; when set, clients must use it before anything but `NBD_OPT_ABORT`.
    pub tls: Option<ServerTls>,
    /// Limit of handshake waits and of every reply write.
    pub timeout: Duration,
    /// Bytes of reads a client may have in flight (memory bound per client).
    pub max_in_flight_bytes: usize,
    /// Connections served at once (a multi-connection client counts each); one over it is
    /// closed before the greeting, so memory stays below `max_clients * max_in_flight_bytes`.
    pub max_clients: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            tls: None,
            timeout: Duration::from_secs(30),
            max_in_flight_bytes: 64 << 20,
            max_clients: 16,
        }
    }
}

/// Where the server accepts clients.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A unix socket.
    Unix(UnixListener),
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Self {
        Listener::Unix(l)
    }
}

impl Listener {
    async fn accept(&self) -> std::io::Result<(BoxIo, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok((Box::new(s), a.to_string()))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok((Box::new(s), "unix client".into()))
            }
        }
    }
}

/// Serves `export` read-only to every client that connects, until the listener fails.
pub async fn serve(
    listener: impl Into<Listener>,
    export: Arc<Export>,
    opts: ServeOptions,
) -> Result<(), NbdError> {
    serve_until(listener, export, opts, std::future::pending()).await
}

/// Like [`serve`], and stops accepting when `shutdown` completes (sessions are dropped).
pub async fn serve_until(
    listener: impl Into<Listener>,
    export: Arc<Export>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NbdError> {
    let listener = listener.into();
    let opts = Arc::new(opts);
    // A shared lock keeps GC from deleting chunks of the point while it is served.
    let lock = match RepoLock::acquire(
        export.repo.store().clone(),
        LockKind::Shared,
        &format!("NBD export {}", export.name),
        Duration::from_secs(600),
    )
    .await
    {
        Ok(l) => Some(l),
        Err(ArchiveError::Store(StoreError::PermissionDenied { .. })) => {
            warn!("repository is read-only: serving without a lock");
            None
        }
        Err(e) => return Err(NbdError::Archive(e.to_string())),
    };
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    info!("serving {} ({} bytes) over NBD", export.name, export.size());
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            r = listener.accept() => match r {
                Ok((io, peer)) => {
                    if sessions.len() >= opts.max_clients {
                        debug!("NBD client {peer} refused: {} clients connected", sessions.len());
                        drop(io);
                        continue;
                    }
                    let (export, opts) = (export.clone(), opts.clone());
                    sessions.spawn(async move {
                        debug!("NBD client {peer} connected");
                        match session(io, export, opts).await {
                            Ok(()) => debug!("NBD client {peer} disconnected"),
                            Err(e) => warn!("NBD client {peer}: {e}"),
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors and similar: back off instead of spinning.
                    warn!("accepting an NBD client: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    sessions.shutdown().await;
    if let Some(l) = lock {
        l.release()
            .await
            .map_err(|e| NbdError::Archive(e.to_string()))?;
    }
    Ok(())
}

struct Negotiated {
    io: BoxIo,
    structured: bool,
    allocation: bool,
}

async fn send_rep(
    io: &mut BoxIo,
    t: Duration,
    option: u32,
    typ: u32,
    data: &[u8],
) -> Result<(), NbdError> {
    let h = proto::OptReplyHeader::encode(option, typ, data.len() as u32);
    io::write_all(io, &[&h, data], t, "sending an option reply").await
}

fn export_flags() -> u16 {
    flags::HAS_FLAGS | flags::READ_ONLY | flags::SEND_DF | flags::CAN_MULTI_CONN | flags::SEND_CACHE
}

fn name_matches(export: &Export, name: &str) -> bool {
    name.is_empty() || name == export.name
}

/// Option haggling; `None` when the client aborted.
async fn handshake(
    mut io: BoxIo,
    export: &Export,
    opts: &ServeOptions,
) -> Result<Option<Negotiated>, NbdError> {
    let t = opts.timeout;
    let hflags = proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES;
    io::write_all(
        &mut io,
        &[
            &proto::NBDMAGIC.to_be_bytes(),
            &proto::IHAVEOPT.to_be_bytes(),
            &hflags.to_be_bytes(),
        ],
        t,
        "sending the greeting",
    )
    .await?;
    let mut cf = [0u8; 4];
    io::read_exact(&mut io, &mut cf, t, "reading client flags").await?;
    let cflags = u32::from_be_bytes(cf);
    if cflags & !(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES) != 0 {
        return Err(ProtocolError::Other(format!("unknown client flags 0x{cflags:x}")).into());
    }
    let no_zeroes = cflags & proto::FLAG_C_NO_ZEROES != 0;
    let mut tls_active = false;
    let mut structured = false;
    let mut allocation = false;
    for _ in 0..256 {
        let mut h = [0u8; 16];
        io::read_exact(&mut io, &mut h, t, "reading an option").await?;
        let magic = u64::from_be_bytes(h[0..8].try_into().unwrap_or_default());
        if magic != proto::IHAVEOPT {
            return Err(ProtocolError::BadMagic {
                what: "option",
                found: magic,
            }
            .into());
        }
        let option = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let len = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        if len > proto::MAX_OPTION_REQUEST {
            return Err(ProtocolError::Oversized {
                what: "option",
                len: u64::from(len),
                max: u64::from(proto::MAX_OPTION_REQUEST),
            }
            .into());
        }
        let data = io::read_vec(&mut io, len as usize, t, "reading option data").await?;
        if opts.tls.is_some() && !tls_active && option != opt::STARTTLS && option != opt::ABORT {
            if option == opt::EXPORT_NAME {
                // No error reply exists for EXPORT_NAME: hard disconnect.
                return Err(NbdError::Tls(
                    "client asked for the export without TLS".into(),
                ));
            }
            send_rep(&mut io, t, option, rep::ERR_TLS_REQD, b"TLS is required").await?;
            continue;
        }
        match option {
            opt::ABORT => {
                let _ = send_rep(&mut io, t, option, rep::ACK, &[]).await;
                let _ = io.shutdown().await;
                return Ok(None);
            }
            opt::STARTTLS => {
                let Some(tls) = &opts.tls else {
                    send_rep(&mut io, t, option, rep::ERR_UNSUP, b"TLS is not configured").await?;
                    continue;
                };
                if tls_active || !data.is_empty() {
                    send_rep(&mut io, t, option, rep::ERR_INVALID, b"").await?;
                    continue;
                }
                send_rep(&mut io, t, option, rep::ACK, &[]).await?;
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
                let s = match tokio::time::timeout(t, acceptor.accept(io)).await {
                    Err(_) => {
                        return Err(NbdError::Timeout {
                            during: "TLS handshake",
                            after: t,
                        })
                    }
                    Ok(r) => r.map_err(|e| NbdError::Tls(format!("handshake: {e}")))?,
                };
                io = Box::new(s);
                tls_active = true;
                // Everything negotiated in clear text is forgotten (spec requirement).
                structured = false;
                allocation = false;
            }
            opt::LIST => {
                if !data.is_empty() {
                    send_rep(&mut io, t, option, rep::ERR_INVALID, b"").await?;
                    continue;
                }
                let mut p = (export.name.len() as u32).to_be_bytes().to_vec();
                p.extend_from_slice(export.name.as_bytes());
                p.extend_from_slice(export.description.as_bytes());
                send_rep(&mut io, t, option, rep::SERVER, &p).await?;
                send_rep(&mut io, t, option, rep::ACK, &[]).await?;
            }
            opt::STRUCTURED_REPLY => {
                if !data.is_empty() {
                    send_rep(&mut io, t, option, rep::ERR_INVALID, b"").await?;
                    continue;
                }
                structured = true;
                send_rep(&mut io, t, option, rep::ACK, &[]).await?;
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                let set = option == opt::SET_META_CONTEXT;
                let Ok((name, queries)) = proto::parse_meta_query(&data) else {
                    send_rep(
                        &mut io,
                        t,
                        option,
                        rep::ERR_INVALID,
                        b"bad meta context data",
                    )
                    .await?;
                    continue;
                };
                if set && !structured {
                    send_rep(
                        &mut io,
                        t,
                        option,
                        rep::ERR_INVALID,
                        b"structured replies first",
                    )
                    .await?;
                    continue;
                }
                if !name_matches(export, &name) {
                    send_rep(&mut io, t, option, rep::ERR_UNKNOWN, b"no such export").await?;
                    continue;
                }
                let wants = |q: &str| {
                    q == proto::BASE_ALLOCATION || (!set && (q == "base:" || q.is_empty()))
                };
                let grant = if queries.is_empty() {
                    !set
                } else {
                    queries.iter().any(|q| wants(q))
                };
                if set {
                    allocation = grant;
                }
                if grant {
                    let mut p = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                    p.extend_from_slice(proto::BASE_ALLOCATION.as_bytes());
                    send_rep(&mut io, t, option, rep::META_CONTEXT, &p).await?;
                }
                send_rep(&mut io, t, option, rep::ACK, &[]).await?;
            }
            opt::INFO | opt::GO => {
                let Ok((name, infos)) = proto::parse_go(&data) else {
                    send_rep(&mut io, t, option, rep::ERR_INVALID, b"bad NBD_OPT_GO data").await?;
                    continue;
                };
                if !name_matches(export, &name) {
                    send_rep(&mut io, t, option, rep::ERR_UNKNOWN, b"no such export").await?;
                    continue;
                }
                let mut p = proto::info::EXPORT.to_be_bytes().to_vec();
                p.extend_from_slice(&export.size().to_be_bytes());
                p.extend_from_slice(&export_flags().to_be_bytes());
                send_rep(&mut io, t, option, rep::INFO, &p).await?;
                if infos.contains(&proto::info::NAME) {
                    let mut p = proto::info::NAME.to_be_bytes().to_vec();
                    p.extend_from_slice(export.name.as_bytes());
                    send_rep(&mut io, t, option, rep::INFO, &p).await?;
                }
                if infos.contains(&proto::info::DESCRIPTION) {
                    let mut p = proto::info::DESCRIPTION.to_be_bytes().to_vec();
                    p.extend_from_slice(export.description.as_bytes());
                    send_rep(&mut io, t, option, rep::INFO, &p).await?;
                }
                let mut p = proto::info::BLOCK_SIZE.to_be_bytes().to_vec();
                for v in [1u32, 4096, MAX_REQUEST] {
                    p.extend_from_slice(&v.to_be_bytes());
                }
                send_rep(&mut io, t, option, rep::INFO, &p).await?;
                send_rep(&mut io, t, option, rep::ACK, &[]).await?;
                if option == opt::GO {
                    return Ok(Some(Negotiated {
                        io,
                        structured,
                        allocation,
                    }));
                }
            }
            opt::EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data);
                if !name_matches(export, &name) {
                    return Err(NbdError::Invalid(format!(
                        "client asked for unknown export {name:?}"
                    )));
                }
                let mut p = export.size().to_be_bytes().to_vec();
                p.extend_from_slice(&export_flags().to_be_bytes());
                if !no_zeroes {
                    p.extend_from_slice(&[0u8; 124]);
                }
                io::write_all(&mut io, &[&p], t, "sending export info").await?;
                return Ok(Some(Negotiated {
                    io,
                    structured,
                    allocation,
                }));
            }
            _ => send_rep(&mut io, t, option, rep::ERR_UNSUP, b"").await?,
        }
    }
    Err(ProtocolError::Other("too many options".into()).into())
}

type Writer = Arc<tokio::sync::Mutex<WriteHalf<BoxIo>>>;

struct Replier {
    w: Writer,
    t: Duration,
    structured: bool,
}

impl Replier {
    async fn error(&self, handle: u64, e: u32, message: &str) -> Result<(), NbdError> {
        let mut w = self.w.lock().await;
        if self.structured {
            let p = proto::encode_error_payload(e, message);
            let h =
                proto::encode_chunk_header(reply::FLAG_DONE, reply::ERROR, handle, p.len() as u32);
            io::write_all(&mut *w, &[&h, &p], self.t, "sending a reply").await
        } else {
            io::write_all(
                &mut *w,
                &[&proto::encode_simple_reply(e, handle)],
                self.t,
                "sending a reply",
            )
            .await
        }
    }

    async fn ok(&self, handle: u64) -> Result<(), NbdError> {
        let mut w = self.w.lock().await;
        io::write_all(
            &mut *w,
            &[&proto::encode_simple_reply(0, handle)],
            self.t,
            "sending a reply",
        )
        .await
    }

    async fn read(
        &self,
        handle: u64,
        offset: u64,
        len: u32,
        data: Option<Vec<u8>>,
    ) -> Result<(), NbdError> {
        let mut w = self.w.lock().await;
        if !self.structured {
            let zeros;
            let body: &[u8] = match &data {
                Some(d) => d,
                None => {
                    zeros = vec![0u8; len as usize];
                    &zeros
                }
            };
            return io::write_all(
                &mut *w,
                &[&proto::encode_simple_reply(0, handle), body],
                self.t,
                "sending a reply",
            )
            .await;
        }
        match data {
            None => {
                let mut p = offset.to_be_bytes().to_vec();
                p.extend_from_slice(&len.to_be_bytes());
                let h =
                    proto::encode_chunk_header(reply::FLAG_DONE, reply::OFFSET_HOLE, handle, 12);
                io::write_all(&mut *w, &[&h, &p], self.t, "sending a reply").await
            }
            Some(d) => {
                let h = proto::encode_chunk_header(
                    reply::FLAG_DONE,
                    reply::OFFSET_DATA,
                    handle,
                    len + 8,
                );
                io::write_all(
                    &mut *w,
                    &[&h, &offset.to_be_bytes(), &d],
                    self.t,
                    "sending a reply",
                )
                .await
            }
        }
    }

    async fn status(&self, handle: u64, descriptors: &[(u32, u32)]) -> Result<(), NbdError> {
        let mut p = Vec::with_capacity(4 + descriptors.len() * 8);
        p.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
        for (l, s) in descriptors {
            p.extend_from_slice(&l.to_be_bytes());
            p.extend_from_slice(&s.to_be_bytes());
        }
        let h = proto::encode_chunk_header(
            reply::FLAG_DONE,
            reply::BLOCK_STATUS,
            handle,
            p.len() as u32,
        );
        let mut w = self.w.lock().await;
        io::write_all(&mut *w, &[&h, &p], self.t, "sending a reply").await
    }
}

async fn session(io: BoxIo, export: Arc<Export>, opts: Arc<ServeOptions>) -> Result<(), NbdError> {
    let Some(n) = handshake(io, &export, &opts).await? else {
        return Ok(());
    };
    let (mut r, w) = tokio::io::split(n.io);
    let replier = Arc::new(Replier {
        w: Arc::new(tokio::sync::Mutex::new(w)),
        t: opts.timeout,
        structured: n.structured,
    });
    // One permit per MiB of read data in flight; a read takes at most 32 of them.
    let budget = (opts.max_in_flight_bytes >> 20).max(MAX_REQUEST as usize >> 20);
    let slots = Arc::new(Semaphore::new(budget));
    let mut tasks: JoinSet<Result<(), NbdError>> = JoinSet::new();
    let size = export.size();
    let res = loop {
        // Reap finished requests; a failed reply write ends the session.
        while let Some(done) = tasks.try_join_next() {
            if let Ok(Err(e)) = done {
                return Err(e);
            }
        }
        let mut hb = [0u8; 28];
        // Idle clients may wait as long as they like between requests.
        match tokio::io::AsyncReadExt::read_exact(&mut r, &mut hb).await {
            Ok(_) => {}
            Err(e) => break Err(NbdError::io("reading a request", e)),
        }
        let req = match Request::parse(&hb) {
            Ok(q) => q,
            Err(e) => break Err(e.into()),
        };
        let in_range = req
            .offset
            .checked_add(u64::from(req.len))
            .is_some_and(|e| e <= size);
        let known_flags = cmd::FLAG_DF | cmd::FLAG_REQ_ONE | 1 /* FUA */;
        match req.typ {
            cmd::DISC => break Ok(()),
            cmd::WRITE => {
                // The payload must be consumed to stay in step; refuse absurd lengths outright.
                if req.len > MAX_REQUEST {
                    break Err(ProtocolError::Oversized {
                        what: "write request",
                        len: u64::from(req.len),
                        max: u64::from(MAX_REQUEST),
                    }
                    .into());
                }
                let mut left = req.len as usize;
                let mut sink = vec![0u8; left.min(1 << 20)];
                while left > 0 {
                    let n = left.min(sink.len());
                    io::read_exact(
                        &mut r,
                        &mut sink[..n],
                        opts.timeout,
                        "discarding write data",
                    )
                    .await?;
                    left -= n;
                }
                replier
                    .error(req.handle, errno::EPERM, "the export is read-only")
                    .await?;
            }
            _ if req.flags & !known_flags != 0 => {
                replier
                    .error(req.handle, errno::EINVAL, "unknown command flags")
                    .await?;
            }
            cmd::TRIM | cmd::WRITE_ZEROES => {
                replier
                    .error(req.handle, errno::EPERM, "the export is read-only")
                    .await?;
            }
            cmd::FLUSH => replier.ok(req.handle).await?,
            cmd::CACHE => {
                if in_range {
                    replier.ok(req.handle).await?;
                } else {
                    replier
                        .error(req.handle, errno::EINVAL, "past the end of the export")
                        .await?;
                }
            }
            cmd::READ => {
                if !in_range || req.len == 0 {
                    replier
                        .error(req.handle, errno::EINVAL, "read past the end of the export")
                        .await?;
                    continue;
                }
                if req.len > MAX_REQUEST {
                    replier
                        .error(req.handle, errno::EOVERFLOW, "read larger than 32 MiB")
                        .await?;
                    continue;
                }
                let permit = slots
                    .clone()
                    .acquire_many_owned(req.len.div_ceil(1 << 20))
                    .await
                    .map_err(|_| NbdError::Closed { during: "serving" })?;
                let (export, replier) = (export.clone(), replier.clone());
                tasks.spawn(async move {
                    let _permit = permit;
                    match export.read(req.offset, req.len).await {
                        Ok(d) => replier.read(req.handle, req.offset, req.len, d).await,
                        Err(e) => {
                            warn!("read of {} bytes at {}: {e}", req.len, req.offset);
                            replier
                                .error(req.handle, errno::EIO, "reading the restore point failed")
                                .await
                        }
                    }
                });
            }
            cmd::BLOCK_STATUS => {
                if !n.structured || !n.allocation {
                    replier
                        .error(req.handle, errno::EINVAL, "no metadata context negotiated")
                        .await?;
                } else if !in_range || req.len == 0 {
                    replier
                        .error(req.handle, errno::EINVAL, "block status past the end")
                        .await?;
                } else {
                    let d =
                        export.allocation(req.offset, req.len, req.flags & cmd::FLAG_REQ_ONE != 0);
                    replier.status(req.handle, &d).await?;
                }
            }
            _ => {
                replier
                    .error(req.handle, errno::EINVAL, "unknown command")
                    .await?
            }
        }
    };
    // Answer everything already accepted before closing (NBD_CMD_DISC semantics).
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            warn!("finishing a request: {e}");
        }
    }
    let mut w = replier.w.lock().await;
    let _ = tokio::time::timeout(opts.timeout, w.shutdown()).await;
    match res {
        Err(NbdError::Closed { .. }) => Ok(()),
        r => r,
    }
}

/// Entry points for the fuzz targets and property tests; not a stable API.
#[doc(hidden)]
pub mod fuzzing;
