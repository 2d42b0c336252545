//! The NBD client: handshake, option negotiation, and a multiplexed transmission phase.
//!
//! Each connection has one reader task that owns the receive half. Requests register a
//! pending entry under a fresh handle, send their header under the writer lock, and wait for
//! the reader to complete them, so any number of requests can be in flight. The reader
//! checks every reply against its request (handle known, chunks inside the range and not
//! overlapping, block status not past the range) and treats any violation as fatal for the
//! connection: every request in flight then fails with the same error. When the server
//! advertises `NBD_FLAG_CAN_MULTI_CONN`, a client opens several connections and spreads
//! requests over them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::error::{NbdError, ProtocolError};
use crate::io::{self, BoxIo};
use crate::proto::{
    self, cmd, flags, info, opt, rep, reply, ReadCoverage, ReplyHeader, StatusExtent,
};
use crate::tls::ClientTls;
use crate::uri::{Endpoint, NbdUri};

/// What the client asks for and how patient it is.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// TLS settings; required for `nbds://` unless the URI names `tls-certificates`.
    pub tls: Option<ClientTls>,
    /// Metadata contexts to negotiate (by default `base:allocation`).
    pub contexts: Vec<String>,
    /// Most connections to open when the server allows several.
    pub connections: usize,
    /// Limit of every network wait (connect, handshake, each reply).
    pub timeout: Duration,
    /// Largest single read request; larger reads are split into requests that run in
    /// parallel (the server's maximum also applies). Measured against qemu-nbd 10 on
    /// loopback, 512 KiB requests are fastest, and 4 MiB ones are about four times slower
    /// (for nbdcopy too).
    pub max_request: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls: None,
            contexts: vec![proto::BASE_ALLOCATION.to_string()],
            connections: 4,
            timeout: Duration::from_secs(30),
            max_request: 512 << 10,
        }
    }
}

impl ClientOptions {
    /// Also negotiates `qemu:dirty-bitmap:NAME`.
    pub fn with_dirty_bitmap(mut self, name: &str) -> Self {
        self.contexts
            .push(format!("{}{name}", proto::QEMU_DIRTY_BITMAP));
        self
    }

    /// Uses TLS.
    pub fn with_tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// What the server said about the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export name as requested.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags (`proto::flags`).
    pub flags: u16,
    /// Minimum block size (1 when the server did not say).
    pub block_min: u32,
    /// Preferred block size.
    pub block_preferred: u32,
    /// Maximum request size (32 MiB when the server did not say).
    pub block_max: u32,
    /// Description, if the server sent one.
    pub description: Option<String>,
}

impl ExportInfo {
    /// The export cannot be written.
    pub fn read_only(&self) -> bool {
        self.flags & flags::READ_ONLY != 0
    }

    /// Several connections may be used.
    pub fn can_multi_conn(&self) -> bool {
        self.flags & flags::CAN_MULTI_CONN != 0
    }
}

/// One entry of `NBD_OPT_LIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportEntry {
    /// Export name.
    pub name: String,
    /// Description (may be empty).
    pub description: String,
}

async fn connect_stream(uri: &NbdUri, t: Duration) -> Result<BoxIo, NbdError> {
    let fut = async {
        Ok::<BoxIo, std::io::Error>(match &uri.endpoint {
            Endpoint::Tcp { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                // Request headers are small and latency-bound.
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Endpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        })
    };
    match tokio::time::timeout(t, fut).await {
        Err(_) => Err(NbdError::Timeout {
            during: "connecting",
            after: t,
        }),
        Ok(r) => r.map_err(|e| NbdError::io("connecting", e)),
    }
}

/// The option phase of one connection.
struct Handshake {
    io: BoxIo,
    t: Duration,
    no_zeroes: bool,
}

fn refused(option: u32, typ: u32, payload: &[u8], tls: bool) -> NbdError {
    let mut message =
        String::from_utf8_lossy(&payload[..payload.len().min(proto::MAX_STRING)]).into_owned();
    if typ == rep::ERR_TLS_REQD && !tls {
        message = format!("{message} (the server requires TLS: use nbds:// with TLS settings)");
    }
    NbdError::Refused {
        option: opt::name(option),
        reply: rep::name(typ),
        message,
    }
}

impl Handshake {
    async fn start(uri: &NbdUri, t: Duration) -> Result<Handshake, NbdError> {
        let mut io = connect_stream(uri, t).await?;
        let mut b = [0u8; 18];
        io::read_exact(&mut io, &mut b[..16], t, "reading the server greeting").await?;
        let magic = u64::from_be_bytes(b[0..8].try_into().unwrap_or_default());
        if magic != proto::NBDMAGIC {
            return Err(ProtocolError::BadMagic {
                what: "server greeting",
                found: magic,
            }
            .into());
        }
        let second = u64::from_be_bytes(b[8..16].try_into().unwrap_or_default());
        if second == proto::CLISERV_MAGIC {
            return Err(NbdError::Unsupported(
                "oldstyle negotiation (server is too old)".into(),
            ));
        }
        if second != proto::IHAVEOPT {
            return Err(ProtocolError::BadMagic {
                what: "server greeting",
                found: second,
            }
            .into());
        }
        io::read_exact(&mut io, &mut b[16..18], t, "reading handshake flags").await?;
        let hflags = u16::from_be_bytes([b[16], b[17]]);
        if hflags & proto::FLAG_FIXED_NEWSTYLE == 0 {
            return Err(NbdError::Unsupported("fixed newstyle negotiation".into()));
        }
        let no_zeroes = hflags & proto::FLAG_NO_ZEROES != 0;
        let mut cflags = proto::FLAG_C_FIXED_NEWSTYLE;
        if no_zeroes {
            cflags |= proto::FLAG_C_NO_ZEROES;
        }
        io::write_all(&mut io, &[&cflags.to_be_bytes()], t, "sending client flags").await?;
        Ok(Handshake { io, t, no_zeroes })
    }

    async fn send(&mut self, option: u32, data: &[u8]) -> Result<(), NbdError> {
        io::write_all(
            &mut self.io,
            &[&proto::encode_option(option, data)],
            self.t,
            "sending an option",
        )
        .await
    }

    async fn reply(&mut self, option: u32) -> Result<(u32, Vec<u8>), NbdError> {
        let mut b = [0u8; proto::OptReplyHeader::SIZE];
        io::read_exact(&mut self.io, &mut b, self.t, "reading an option reply").await?;
        let h = proto::OptReplyHeader::parse(&b)?;
        if h.option != option {
            return Err(ProtocolError::WrongOption {
                expected: option,
                got: h.option,
            }
            .into());
        }
        let payload = io::read_vec(
            &mut self.io,
            h.len as usize,
            self.t,
            "reading an option reply",
        )
        .await?;
        Ok((h.typ, payload))
    }

    async fn starttls(
        mut self,
        tls: &ClientTls,
        default_name: &str,
    ) -> Result<Handshake, NbdError> {
        self.send(opt::STARTTLS, &[]).await?;
        let (typ, payload) = self.reply(opt::STARTTLS).await?;
        if typ != rep::ACK {
            return Err(refused(opt::STARTTLS, typ, &payload, true));
        }
        let name = tls
            .server_name
            .as_deref()
            .unwrap_or(default_name)
            .to_string();
        let server_name = rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|e| NbdError::Tls(format!("server name {name:?}: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let stream =
            match tokio::time::timeout(self.t, connector.connect(server_name, self.io)).await {
                Err(_) => {
                    return Err(NbdError::Timeout {
                        during: "TLS handshake",
                        after: self.t,
                    })
                }
                Ok(r) => r.map_err(|e| NbdError::Tls(format!("handshake with {name}: {e}")))?,
            };
        Ok(Handshake {
            io: Box::new(stream),
            t: self.t,
            no_zeroes: self.no_zeroes,
        })
    }

    async fn structured(&mut self, tls: bool) -> Result<bool, NbdError> {
        self.send(opt::STRUCTURED_REPLY, &[]).await?;
        let (typ, payload) = self.reply(opt::STRUCTURED_REPLY).await?;
        match typ {
            rep::ACK => Ok(true),
            rep::ERR_UNSUP | rep::ERR_POLICY | rep::ERR_INVALID => Ok(false),
            t => Err(refused(opt::STRUCTURED_REPLY, t, &payload, tls)),
        }
    }

    async fn meta_contexts(
        &mut self,
        export: &str,
        queries: &[String],
        tls: bool,
    ) -> Result<HashMap<String, u32>, NbdError> {
        self.send(
            opt::SET_META_CONTEXT,
            &proto::encode_meta_query(export, queries),
        )
        .await?;
        let mut out = HashMap::new();
        loop {
            let (typ, payload) = self.reply(opt::SET_META_CONTEXT).await?;
            match typ {
                rep::META_CONTEXT => {
                    let (id, name) = proto::parse_meta_context(&payload)?;
                    out.insert(name, id);
                }
                rep::ACK => return Ok(out),
                rep::ERR_UNSUP => return Ok(HashMap::new()),
                t if t & rep::FLAG_ERROR != 0 => {
                    return Err(refused(opt::SET_META_CONTEXT, t, &payload, tls))
                }
                t => {
                    return Err(ProtocolError::UnexpectedType {
                        what: "NBD_OPT_SET_META_CONTEXT reply",
                        typ: t,
                    }
                    .into())
                }
            }
            if out.len() > 4096 {
                return Err(ProtocolError::Other("too many metadata contexts".into()).into());
            }
        }
    }

    /// `NBD_OPT_GO` (or `INFO`); `None` when the server does not know the option.
    async fn go(
        &mut self,
        option: u32,
        export: &str,
        tls: bool,
    ) -> Result<Option<ExportInfo>, NbdError> {
        let wanted = [info::BLOCK_SIZE, info::DESCRIPTION];
        self.send(option, &proto::encode_go(export, &wanted))
            .await?;
        let mut ei = ExportInfo {
            name: export.to_string(),
            size: 0,
            flags: 0,
            block_min: 1,
            block_preferred: 4096,
            block_max: 32 << 20,
            description: None,
        };
        let mut have_export = false;
        loop {
            let (typ, payload) = self.reply(option).await?;
            match typ {
                rep::INFO => match proto::parse_info(&payload)? {
                    proto::Info::Export { size, flags } => {
                        ei.size = size;
                        ei.flags = flags;
                        have_export = true;
                    }
                    proto::Info::BlockSize {
                        min,
                        preferred,
                        max,
                    } => {
                        ei.block_min = min.max(1);
                        ei.block_preferred = preferred.max(1);
                        ei.block_max = max.max(ei.block_min);
                    }
                    proto::Info::Description(d) => ei.description = Some(d),
                    proto::Info::Name(_) | proto::Info::Unknown(_) => {}
                },
                rep::ACK => {
                    if !have_export {
                        return Err(ProtocolError::Other(format!(
                            "{} succeeded without NBD_INFO_EXPORT",
                            opt::name(option)
                        ))
                        .into());
                    }
                    return Ok(Some(ei));
                }
                rep::ERR_UNSUP => return Ok(None),
                t if t & rep::FLAG_ERROR != 0 => return Err(refused(option, t, &payload, tls)),
                // Other replies (future extensions) are skipped.
                t => debug!("ignoring option reply type {t} to {}", opt::name(option)),
            }
        }
    }

    /// The old way into transmission, for servers without `NBD_OPT_GO`.
    async fn export_name(&mut self, export: &str) -> Result<ExportInfo, NbdError> {
        self.send(opt::EXPORT_NAME, export.as_bytes()).await?;
        let n = if self.no_zeroes { 10 } else { 134 };
        let b = io::read_vec(&mut self.io, n, self.t, "reading the export size").await?;
        Ok(ExportInfo {
            name: export.to_string(),
            size: u64::from_be_bytes(b[0..8].try_into().unwrap_or_default()),
            flags: u16::from_be_bytes([b[8], b[9]]),
            block_min: 1,
            block_preferred: 4096,
            block_max: 32 << 20,
            description: None,
        })
    }

    /// Soft disconnect during the option phase.
    async fn abort(mut self) {
        if self.send(opt::ABORT, &[]).await.is_ok() {
            // The server may or may not acknowledge; either is fine.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.reply(opt::ABORT)).await;
        }
        let _ = self.io.shutdown().await;
    }
}

fn tls_for(uri: &NbdUri, opts: &ClientOptions) -> Result<Option<ClientTls>, NbdError> {
    if let Some(t) = &opts.tls {
        return Ok(Some(t.clone()));
    }
    if let Some(dir) = &uri.tls_certificates {
        return Ok(Some(ClientTls::from_dir(dir)?));
    }
    if uri.tls {
        return Err(NbdError::Invalid(format!(
            "{uri} requires TLS: give a CA, a certificate pin or tls-certificates=DIR"
        )));
    }
    Ok(None)
}

async fn open_handshake(uri: &NbdUri, opts: &ClientOptions) -> Result<(Handshake, bool), NbdError> {
    let tls = tls_for(uri, opts)?;
    let hs = Handshake::start(uri, opts.timeout).await?;
    match &tls {
        Some(t) => Ok((hs.starttls(t, uri.server_name()).await?, true)),
        None => Ok((hs, false)),
    }
}

/// Lists the server's exports (`NBD_OPT_LIST`).
pub async fn list_exports(
    uri: &NbdUri,
    opts: &ClientOptions,
) -> Result<Vec<ExportEntry>, NbdError> {
    let (mut hs, tls) = open_handshake(uri, opts).await?;
    hs.send(opt::LIST, &[]).await?;
    let mut out = Vec::new();
    loop {
        let (typ, payload) = hs.reply(opt::LIST).await?;
        match typ {
            rep::SERVER => {
                let (name, description) = proto::parse_server(&payload)?;
                out.push(ExportEntry { name, description });
            }
            rep::ACK => break,
            t => return Err(refused(opt::LIST, t, &payload, tls)),
        }
        if out.len() > 65536 {
            return Err(ProtocolError::Other("export list is too long".into()).into());
        }
    }
    hs.abort().await;
    Ok(out)
}

/// Queries one export without entering transmission (`NBD_OPT_INFO`).
pub async fn export_info(uri: &NbdUri, opts: &ClientOptions) -> Result<ExportInfo, NbdError> {
    let (mut hs, tls) = open_handshake(uri, opts).await?;
    let info = hs
        .go(opt::INFO, &uri.export, tls)
        .await?
        .ok_or_else(|| NbdError::Unsupported("NBD_OPT_INFO".into()))?;
    hs.abort().await;
    Ok(info)
}

// ---------------------------------------------------------------- transmission phase

enum Op {
    Read {
        buf: Vec<u8>,
        cov: ReadCoverage,
    },
    Status {
        offset: u64,
        len: u32,
        by_context: HashMap<u32, Vec<StatusExtent>>,
    },
}

impl Op {
    fn command(&self) -> &'static str {
        match self {
            Op::Read { .. } => "NBD_CMD_READ",
            Op::Status { .. } => "NBD_CMD_BLOCK_STATUS",
        }
    }
}

struct Pending {
    op: Op,
    error: Option<NbdError>,
    tx: oneshot::Sender<Result<Op, NbdError>>,
}

#[derive(Default)]
struct State {
    pending: HashMap<u64, Pending>,
    dead: Option<NbdError>,
}

struct Shared {
    state: Mutex<State>,
    structured: bool,
    context_ids: HashSet<u32>,
    t: Duration,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map inconsistent: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection dead and fails every request in flight.
    fn fail(&self, e: NbdError) {
        let drained: Vec<Pending> = {
            let mut st = self.lock();
            if st.dead.is_none() {
                st.dead = Some(e.clone());
            }
            st.pending.drain().map(|(_, p)| p).collect()
        };
        for p in drained {
            let _ = p.tx.send(Err(e.clone()));
        }
    }

    fn dead_error(&self) -> NbdError {
        let st = self.lock();
        let e = st.dead.clone().unwrap_or(NbdError::Closed {
            during: "waiting for a reply",
        });
        NbdError::Dead(Arc::new(e))
    }
}

type Reader = BufReader<ReadHalf<BoxIo>>;

async fn reader_task(mut r: Reader, shared: Arc<Shared>) {
    let e = loop {
        if let Err(e) = read_one(&mut r, &shared).await {
            break e;
        }
    };
    debug!("NBD connection reader stops: {e}");
    shared.fail(e);
}

async fn read_one<R: AsyncRead + Unpin>(r: &mut R, shared: &Shared) -> Result<(), NbdError> {
    let t = shared.t;
    let mut hb = [0u8; 20];
    // An idle connection waits here without limit; each request times its own reply.
    r.read_exact(&mut hb[..4])
        .await
        .map_err(|e| NbdError::io("reading a reply", e))?;
    let size = ReplyHeader::size_for_magic(u32::from_be_bytes([hb[0], hb[1], hb[2], hb[3]]))?;
    io::read_exact(r, &mut hb[4..size], t, "reading a reply header").await?;
    let h = ReplyHeader::parse(&hb[..size])?;
    let handle = h.handle();
    let p = shared.lock().pending.remove(&handle);
    let Some(mut p) = p else {
        return Err(ProtocolError::UnknownHandle(handle).into());
    };
    match handle_reply(r, shared, h, &mut p).await {
        Ok(true) => {
            let res = match p.error.take() {
                Some(e) => Err(e),
                None => finish(p.op),
            };
            let fatal = match &res {
                Err(e @ NbdError::Protocol(_)) => Some(e.clone()),
                _ => None,
            };
            let _ = p.tx.send(res);
            match fatal {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
        Ok(false) => {
            shared.lock().pending.insert(handle, p);
            Ok(())
        }
        Err(e) => {
            let _ = p.tx.send(Err(e.clone()));
            Err(e)
        }
    }
}

fn finish(op: Op) -> Result<Op, NbdError> {
    if let Op::Read { cov, .. } = &op {
        if !cov.complete() {
            return Err(ProtocolError::ShortRead {
                covered: cov.covered(),
                len: cov.request_len(),
            }
            .into());
        }
    }
    Ok(op)
}

/// Consumes one reply message for `p`; true when the reply is complete.
async fn handle_reply<R: AsyncRead + Unpin>(
    r: &mut R,
    shared: &Shared,
    h: ReplyHeader,
    p: &mut Pending,
) -> Result<bool, NbdError> {
    let t = shared.t;
    match h {
        ReplyHeader::Simple { error, .. } => {
            if error != 0 {
                p.error = Some(NbdError::Server {
                    command: p.op.command(),
                    errno: error,
                    message: String::new(),
                });
                return Ok(true);
            }
            match &mut p.op {
                Op::Read { buf, cov } if !shared.structured => {
                    let len = buf.len() as u64;
                    let at = cov.accept(cov.offset(), len)?;
                    io::read_exact(r, &mut buf[at], t, "reading read data").await?;
                    Ok(true)
                }
                Op::Read { .. } => Err(ProtocolError::Other(
                    "simple reply with data to a read after structured replies were negotiated"
                        .into(),
                )
                .into()),
                Op::Status { .. } => Err(ProtocolError::Other(
                    "block status answered by a simple reply".into(),
                )
                .into()),
            }
        }
        ReplyHeader::Chunk {
            flags, typ, len, ..
        } => {
            if !shared.structured {
                return Err(ProtocolError::Other(
                    "structured reply chunk without structured replies negotiated".into(),
                )
                .into());
            }
            match (typ, &mut p.op) {
                (reply::OFFSET_DATA, Op::Read { buf, cov }) => {
                    let max = buf.len() as u64 + 8;
                    if u64::from(len) > max {
                        return Err(ProtocolError::Oversized {
                            what: "data chunk",
                            len: u64::from(len),
                            max,
                        }
                        .into());
                    }
                    if len <= 8 {
                        return Err(ProtocolError::Truncated {
                            what: "data chunk",
                            len: u64::from(len),
                        }
                        .into());
                    }
                    let mut ob = [0u8; 8];
                    io::read_exact(r, &mut ob, t, "reading a data chunk").await?;
                    let at = cov.accept(u64::from_be_bytes(ob), u64::from(len - 8))?;
                    io::read_exact(r, &mut buf[at], t, "reading a data chunk").await?;
                }
                (reply::OFFSET_HOLE, Op::Read { buf, cov }) => {
                    if len != 12 {
                        return Err(
                            ProtocolError::Other(format!("hole chunk of {len} bytes")).into()
                        );
                    }
                    let b = io::read_vec(r, 12, t, "reading a hole chunk").await?;
                    let (off, n) = proto::parse_hole(&b)?;
                    let at = cov.accept(off, u64::from(n))?;
                    buf[at].fill(0);
                }
                (
                    reply::BLOCK_STATUS,
                    Op::Status {
                        offset,
                        len: rlen,
                        by_context,
                    },
                ) => {
                    let b = read_payload(r, len, t, "block status chunk").await?;
                    let chunk = proto::parse_block_status(&b)?;
                    if !shared.context_ids.contains(&chunk.context) {
                        return Err(ProtocolError::BlockStatus {
                            context: chunk.context,
                            why: "context was not negotiated".into(),
                        }
                        .into());
                    }
                    if by_context.contains_key(&chunk.context) {
                        return Err(ProtocolError::BlockStatus {
                            context: chunk.context,
                            why: "sent twice in one reply".into(),
                        }
                        .into());
                    }
                    let ext = proto::check_block_status(&chunk, *offset, *rlen)?;
                    by_context.insert(chunk.context, ext);
                }
                (reply::NONE, _) => {
                    if len != 0 {
                        return Err(
                            ProtocolError::Other(format!("NONE chunk with {len} bytes")).into()
                        );
                    }
                    if flags & reply::FLAG_DONE == 0 {
                        return Err(ProtocolError::Other(
                            "NONE chunk without the DONE flag".into(),
                        )
                        .into());
                    }
                }
                (typ, op) if typ & 0x8000 != 0 => {
                    let b = read_payload(r, len, t, "error chunk").await?;
                    let e = if typ == reply::ERROR || typ == reply::ERROR_OFFSET {
                        proto::parse_error_chunk(typ, &b)?
                    } else {
                        // Unknown error types still carry the error value first.
                        proto::ErrorChunk {
                            errno: b.get(0..4).map_or(proto::errno::EIO, |x| {
                                u32::from_be_bytes([x[0], x[1], x[2], x[3]])
                            }),
                            message: format!("unknown error chunk type {typ}"),
                            offset: None,
                        }
                    };
                    if p.error.is_none() {
                        let message = match e.offset {
                            Some(o) => format!("{} (at offset {o})", e.message),
                            None => e.message,
                        };
                        p.error = Some(NbdError::Server {
                            command: op.command(),
                            errno: e.errno,
                            message,
                        });
                    }
                }
                (typ, _) => {
                    return Err(ProtocolError::UnexpectedType {
                        what: "reply chunk",
                        typ: u32::from(typ),
                    }
                    .into())
                }
            }
            Ok(flags & reply::FLAG_DONE != 0)
        }
    }
}

async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u32,
    t: Duration,
    what: &'static str,
) -> Result<Vec<u8>, NbdError> {
    if len > proto::MAX_CHUNK_PAYLOAD {
        return Err(ProtocolError::Oversized {
            what,
            len: u64::from(len),
            max: u64::from(proto::MAX_CHUNK_PAYLOAD),
        }
        .into());
    }
    io::read_vec(r, len as usize, t, "reading a reply chunk").await
}

/// One connection in the transmission phase.
struct Connection {
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<Option<WriteHalf<BoxIo>>>,
    next_handle: AtomicU64,
    reader: JoinHandle<()>,
    contexts: HashMap<String, u32>,
}

impl Connection {
    async fn open(
        uri: &NbdUri,
        opts: &ClientOptions,
    ) -> Result<(Connection, ExportInfo), NbdError> {
        let (mut hs, tls) = open_handshake(uri, opts).await?;
        let structured = hs.structured(tls).await?;
        let contexts = if structured && !opts.contexts.is_empty() {
            hs.meta_contexts(&uri.export, &opts.contexts, tls).await?
        } else {
            HashMap::new()
        };
        let info = match hs.go(opt::GO, &uri.export, tls).await? {
            Some(i) => i,
            None => hs.export_name(&uri.export).await?,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            structured,
            context_ids: contexts.values().copied().collect(),
            t: opts.timeout,
        });
        let (rh, wh) = tokio::io::split(hs.io);
        let reader = tokio::spawn(reader_task(
            BufReader::with_capacity(256 << 10, rh),
            shared.clone(),
        ));
        Ok((
            Connection {
                shared,
                writer: tokio::sync::Mutex::new(Some(wh)),
                next_handle: AtomicU64::new(1),
                reader,
                contexts,
            },
            info,
        ))
    }

    fn in_flight(&self) -> usize {
        self.shared.lock().pending.len()
    }

    async fn request(&self, typ: u16, offset: u64, len: u32, op: Op) -> Result<Op, NbdError> {
        let t = self.shared.t;
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            if let Some(e) = &st.dead {
                return Err(NbdError::Dead(Arc::new(e.clone())));
            }
            st.pending.insert(
                handle,
                Pending {
                    op,
                    error: None,
                    tx,
                },
            );
        }
        let hdr = proto::encode_request(0, typ, handle, offset, len);
        {
            let mut w = self.writer.lock().await;
            let Some(w) = w.as_mut() else {
                return Err(NbdError::Dead(Arc::new(NbdError::Closed {
                    during: "sending a request after disconnect",
                })));
            };
            if let Err(e) = io::write_all(w, &[&hdr], t, "sending a request").await {
                self.kill(e.clone());
                return Err(e);
            }
        }
        match tokio::time::timeout(t, rx).await {
            Err(_) => {
                let e = NbdError::Timeout {
                    during: "waiting for a reply",
                    after: t,
                };
                self.kill(e.clone());
                Err(e)
            }
            Ok(Err(_)) => Err(self.shared.dead_error()),
            Ok(Ok(r)) => r,
        }
    }

    fn kill(&self, e: NbdError) {
        warn!("closing NBD connection: {e}");
        self.shared.fail(e);
        self.reader.abort();
    }

    async fn read(&self, offset: u64, buf: Vec<u8>) -> Result<Vec<u8>, NbdError> {
        let len = buf.len() as u64;
        let len32 =
            u32::try_from(len).map_err(|_| NbdError::Invalid("read request over 4 GiB".into()))?;
        let op = Op::Read {
            buf,
            cov: ReadCoverage::new(offset, len),
        };
        match self.request(cmd::READ, offset, len32, op).await? {
            Op::Read { buf, .. } => Ok(buf),
            Op::Status { .. } => {
                Err(ProtocolError::Other("internal: reply kind mismatch".into()).into())
            }
        }
    }

    async fn block_status(
        &self,
        offset: u64,
        len: u32,
    ) -> Result<HashMap<u32, Vec<StatusExtent>>, NbdError> {
        let op = Op::Status {
            offset,
            len,
            by_context: HashMap::new(),
        };
        match self.request(cmd::BLOCK_STATUS, offset, len, op).await? {
            Op::Status { by_context, .. } => Ok(by_context),
            Op::Read { .. } => {
                Err(ProtocolError::Other("internal: reply kind mismatch".into()).into())
            }
        }
    }

    async fn disconnect(&self) {
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let hdr = proto::encode_request(0, cmd::DISC, handle, 0, 0);
        let mut w = self.writer.lock().await;
        if let Some(mut wh) = w.take() {
            if self.shared.lock().dead.is_none() {
                let _ =
                    io::write_all(&mut wh, &[&hdr], self.shared.t, "sending NBD_CMD_DISC").await;
                let _ = tokio::time::timeout(self.shared.t, wh.shutdown()).await;
            }
        }
        self.shared.fail(NbdError::Closed {
            during: "client disconnected",
        });
        self.reader.abort();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        // Dropped without `disconnect`: still say goodbye properly when a runtime is around.
        let dead = self.shared.lock().dead.is_some();
        if let (Some(mut wh), false) = (self.writer.get_mut().take(), dead) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let t = self.shared.t.min(Duration::from_secs(5));
                rt.spawn(async move {
                    let hdr = proto::encode_request(0, cmd::DISC, u64::MAX, 0, 0);
                    let _ = io::write_all(&mut wh, &[&hdr], t, "sending NBD_CMD_DISC").await;
                    let _ = tokio::time::timeout(t, wh.shutdown()).await;
                });
            }
        }
    }
}

/// A client of one export, over one or more connections.
pub struct NbdClient {
    conns: Vec<Connection>,
    next: AtomicUsize,
    info: ExportInfo,
    uri: NbdUri,
    max_request: u32,
}

impl std::fmt::Debug for NbdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient")
            .field("uri", &self.uri.to_string())
            .field("connections", &self.conns.len())
            .field("info", &self.info)
            .finish()
    }
}

/// Largest block status query (the length field is 32 bits; stay aligned).
const MAX_STATUS_QUERY: u64 = 1 << 31;

impl NbdClient {
    /// Connects, negotiates, and opens extra connections when the server allows them.
    pub async fn connect(uri: &NbdUri, opts: &ClientOptions) -> Result<NbdClient, NbdError> {
        let (first, info) = Connection::open(uri, opts).await?;
        let mut conns = vec![first];
        if info.can_multi_conn() && opts.connections > 1 {
            let more = futures::future::join_all(
                (1..opts.connections).map(|_| Connection::open(uri, opts)),
            )
            .await;
            for c in more {
                match c {
                    Ok((c, i)) if i.size == info.size => conns.push(c),
                    Ok(_) => warn!("extra connection to {uri} reports another size: not used"),
                    // The first connection works; fewer connections is slower, not wrong.
                    Err(e) => warn!("extra connection to {uri} failed: {e}"),
                }
            }
        }
        let max_request = opts
            .max_request
            .min(info.block_max)
            .max(info.block_min)
            .max(1);
        debug!(
            "connected to {uri}: {} bytes, {} connection(s)",
            info.size,
            conns.len()
        );
        Ok(NbdClient {
            conns,
            next: AtomicUsize::new(0),
            info,
            uri: uri.clone(),
            max_request,
        })
    }

    /// Parses `uri` and connects.
    pub async fn connect_uri(uri: &str, opts: &ClientOptions) -> Result<NbdClient, NbdError> {
        NbdClient::connect(&NbdUri::parse(uri)?, opts).await
    }

    /// The export as negotiated.
    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// Export size.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// The URI connected to.
    pub fn uri(&self) -> &NbdUri {
        &self.uri
    }

    /// Connections in use.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// True when the server granted the metadata context.
    pub fn has_context(&self, name: &str) -> bool {
        self.conns.iter().all(|c| c.contexts.contains_key(name))
    }

    /// The connection with the fewest requests in flight, ties broken round robin.
    fn pick(&self) -> &Connection {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.conns.len();
        let mut best = &self.conns[start % n];
        let mut best_load = best.in_flight();
        for i in 1..n {
            let c = &self.conns[(start + i) % n];
            let load = c.in_flight();
            if load < best_load {
                best = c;
                best_load = load;
            }
        }
        best
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        if offset.checked_add(len).is_none_or(|e| e > self.info.size) {
            return Err(NbdError::OutOfRange {
                offset,
                len,
                size: self.info.size,
            });
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`; large reads are split and run in parallel.
    pub async fn read_at(&self, offset: u64, mut buf: Vec<u8>) -> Result<Vec<u8>, NbdError> {
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(buf);
        }
        let max = u64::from(self.max_request);
        if len <= max {
            return self.pick().read(offset, buf).await;
        }
        let pieces = (0..len.div_ceil(max)).map(|i| {
            let off = i * max;
            let n = max.min(len - off);
            async move {
                let b = self
                    .pick()
                    .read(offset + off, vec![0u8; n as usize])
                    .await?;
                Ok::<_, NbdError>((off as usize, b))
            }
        });
        for r in futures::future::join_all(pieces).await {
            let (at, b) = r?;
            buf[at..at + b.len()].copy_from_slice(&b);
        }
        Ok(buf)
    }

    /// The status map of `context` over `[offset, offset+len)`, merged into runs.
    pub async fn block_status(
        &self,
        context: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<StatusExtent>, NbdError> {
        self.check_range(offset, len)?;
        if !self.has_context(context) {
            return Err(NbdError::Unsupported(format!("metadata context {context}")));
        }
        let end = offset + len;
        let mut pos = offset;
        let mut out = Vec::new();
        while pos < end {
            let n = (end - pos).min(MAX_STATUS_QUERY);
            let conn = self.pick();
            let id = conn
                .contexts
                .get(context)
                .copied()
                .ok_or_else(|| NbdError::Unsupported(format!("metadata context {context}")))?;
            let mut by_context = conn.block_status(pos, n as u32).await?;
            let ext = by_context
                .remove(&id)
                .ok_or_else(|| ProtocolError::BlockStatus {
                    context: id,
                    why: format!("reply has no descriptors for {context}"),
                })?;
            let covered: u64 = ext.iter().map(|e| e.len).sum();
            pos += covered;
            out.extend(ext);
        }
        Ok(proto::merge_extents(out))
    }

    /// Sends `NBD_CMD_DISC` on every connection and closes them.
    pub async fn disconnect(self) {
        futures::future::join_all(self.conns.iter().map(|c| c.disconnect())).await;
    }
}

/// Entry points for the fuzz targets; not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Feeds `data` as the server's reply stream to a connection with a read (handle 1,
    /// 64 KiB at 4096), a block status (handle 2, 1 MiB at 0, contexts 1 and 2) and a
    /// read at the start (handle 3, 512 bytes) in flight, until the stream ends or breaks
    /// the protocol. Returns how many replies completed.
    pub fn replies(data: &[u8], structured: bool) -> usize {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        else {
            return 0;
        };
        rt.block_on(async {
            let shared = Shared {
                state: Mutex::new(State::default()),
                structured,
                context_ids: [1u32, 2].into_iter().collect(),
                t: Duration::from_millis(1),
            };
            let mut rxs: Vec<oneshot::Receiver<Result<Op, NbdError>>> = Vec::new();
            let ops = [
                (
                    1u64,
                    Op::Read {
                        buf: vec![0; 65536],
                        cov: ReadCoverage::new(4096, 65536),
                    },
                ),
                (
                    2,
                    Op::Status {
                        offset: 0,
                        len: 1 << 20,
                        by_context: HashMap::new(),
                    },
                ),
                (
                    3,
                    Op::Read {
                        buf: vec![0; 512],
                        cov: ReadCoverage::new(0, 512),
                    },
                ),
            ];
            for (h, op) in ops {
                let (tx, rx) = oneshot::channel();
                rxs.push(rx);
                shared.lock().pending.insert(
                    h,
                    Pending {
                        op,
                        error: None,
                        tx,
                    },
                );
            }
            let mut r = data;
            while read_one(&mut r, &shared).await.is_ok() {}
            rxs.into_iter()
                .filter_map(|mut rx| rx.try_recv().ok())
                .filter(Result::is_ok)
                .count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn valid_stream() -> Vec<u8> {
        let mut d = Vec::new();
        d.extend(proto::encode_chunk_header(
            reply::FLAG_DONE,
            reply::OFFSET_DATA,
            3,
            8 + 512,
        ));
        d.extend(0u64.to_be_bytes());
        d.extend([9u8; 512]);
        let mut bs = 1u32.to_be_bytes().to_vec();
        bs.extend(4096u32.to_be_bytes());
        bs.extend(3u32.to_be_bytes());
        d.extend(proto::encode_chunk_header(
            0,
            reply::BLOCK_STATUS,
            2,
            bs.len() as u32,
        ));
        d.extend(&bs);
        let mut bs = 2u32.to_be_bytes().to_vec();
        bs.extend((1u32 << 20).to_be_bytes());
        bs.extend(0u32.to_be_bytes());
        d.extend(proto::encode_chunk_header(
            reply::FLAG_DONE,
            reply::BLOCK_STATUS,
            2,
            bs.len() as u32,
        ));
        d.extend(&bs);
        d.extend(proto::encode_chunk_header(0, reply::OFFSET_HOLE, 1, 12));
        d.extend(4096u64.to_be_bytes());
        d.extend(32768u32.to_be_bytes());
        d.extend(proto::encode_chunk_header(
            0,
            reply::OFFSET_DATA,
            1,
            8 + 32768,
        ));
        d.extend((4096u64 + 32768).to_be_bytes());
        d.extend([1u8; 32768]);
        d.extend(proto::encode_chunk_header(
            reply::FLAG_DONE,
            reply::NONE,
            1,
            0,
        ));
        d
    }

    #[test]
    fn the_reply_reader_completes_a_valid_interleaved_stream() {
        assert_eq!(fuzzing::replies(&valid_stream(), true), 3);
        // Cut anywhere, fewer replies complete and nothing panics.
        let d = valid_stream();
        assert_eq!(fuzzing::replies(&d[..d.len() - 1], true), 2);
        assert_eq!(fuzzing::replies(&d, false), 0);
    }

    proptest! {
        #[test]
        fn random_reply_streams_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1024), structured in any::<bool>()) {
            fuzzing::replies(&data, structured);
        }

        #[test]
        fn mutated_valid_streams_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut d = valid_stream();
            for (at, v) in flips {
                let n = d.len();
                d[at % n] = v;
            }
            fuzzing::replies(&d, true);
        }
    }
}
