//! Wire format: the protocol's constants, and pure parsers and encoders for its messages.
//!
//! Nothing here does I/O, so the parsers of bytes that come from the network can be fuzzed
//! and property-tested in isolation. Every parser checks lengths before it reads and returns
//! a [`ProtocolError`] instead of panicking.

use std::collections::BTreeMap;

use crate::error::ProtocolError;

/// `NBDMAGIC`, the first 8 bytes a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle handshake, and the prefix of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Oldstyle handshake magic (unsupported, recognised for a clear error).
pub const CLISERV_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic of option replies.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of transmission requests.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of simple replies.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of structured reply chunks.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag: no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flag: fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1;
/// Client flag: no zeroes.
pub const FLAG_C_NO_ZEROES: u32 = 2;

/// Options.
pub mod opt {
    /// Enter transmission (old way, no error reply).
    pub const EXPORT_NAME: u32 = 1;
    /// Soft disconnect.
    pub const ABORT: u32 = 2;
    /// List exports.
    pub const LIST: u32 = 3;
    /// Upgrade to TLS.
    pub const STARTTLS: u32 = 5;
    /// Query an export.
    pub const INFO: u32 = 6;
    /// Query an export and enter transmission.
    pub const GO: u32 = 7;
    /// Negotiate structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List metadata contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select metadata contexts.
    pub const SET_META_CONTEXT: u32 = 10;

    /// A readable option name.
    pub fn name(o: u32) -> &'static str {
        match o {
            EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
            ABORT => "NBD_OPT_ABORT",
            LIST => "NBD_OPT_LIST",
            STARTTLS => "NBD_OPT_STARTTLS",
            INFO => "NBD_OPT_INFO",
            GO => "NBD_OPT_GO",
            STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
            LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
            SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
            _ => "unknown option",
        }
    }
}

/// Option reply types.
pub mod rep {
    /// Done.
    pub const ACK: u32 = 1;
    /// One export of a list.
    pub const SERVER: u32 = 2;
    /// Export information.
    pub const INFO: u32 = 3;
    /// One metadata context.
    pub const META_CONTEXT: u32 = 4;
    /// Error bit.
    pub const FLAG_ERROR: u32 = 1 << 31;
    /// Unknown option.
    pub const ERR_UNSUP: u32 = FLAG_ERROR | 1;
    /// Forbidden by policy.
    pub const ERR_POLICY: u32 = FLAG_ERROR | 2;
    /// Invalid option data.
    pub const ERR_INVALID: u32 = FLAG_ERROR | 3;
    /// Not supported on this platform.
    pub const ERR_PLATFORM: u32 = FLAG_ERROR | 4;
    /// TLS required first.
    pub const ERR_TLS_REQD: u32 = FLAG_ERROR | 5;
    /// No such export.
    pub const ERR_UNKNOWN: u32 = FLAG_ERROR | 6;
    /// Server shutting down.
    pub const ERR_SHUTDOWN: u32 = FLAG_ERROR | 7;
    /// Client must honour block sizes.
    pub const ERR_BLOCK_SIZE_REQD: u32 = FLAG_ERROR | 8;
    /// Request too big.
    pub const ERR_TOO_BIG: u32 = FLAG_ERROR | 9;

    /// A readable reply name.
    pub fn name(r: u32) -> &'static str {
        match r {
            ACK => "NBD_REP_ACK",
            SERVER => "NBD_REP_SERVER",
            INFO => "NBD_REP_INFO",
            META_CONTEXT => "NBD_REP_META_CONTEXT",
            ERR_UNSUP => "NBD_REP_ERR_UNSUP",
            ERR_POLICY => "NBD_REP_ERR_POLICY",
            ERR_INVALID => "NBD_REP_ERR_INVALID",
            ERR_PLATFORM => "NBD_REP_ERR_PLATFORM",
            ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD",
            ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN",
            ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
            ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
            ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
            r if r & FLAG_ERROR != 0 => "NBD_REP_ERR_(unknown)",
            _ => "unknown reply",
        }
    }
}

/// `NBD_INFO_*` types.
pub mod info {
    /// Size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// Canonical name.
    pub const NAME: u16 = 1;
    /// Description.
    pub const DESCRIPTION: u16 = 2;
    /// Block size constraints.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags.
pub mod flags {
    /// Flags are valid.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// Read-only export.
    pub const READ_ONLY: u16 = 1 << 1;
    /// Flush supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// FUA supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// Rotational media.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// Trim supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// Write zeroes supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// Don't-fragment reads supported.
    pub const SEND_DF: u16 = 1 << 7;
    /// Several connections see the same data.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// Cache supported.
    pub const SEND_CACHE: u16 = 1 << 10;
}

/// Commands.
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write.
    pub const WRITE: u16 = 1;
    /// Disconnect.
    pub const DISC: u16 = 2;
    /// Flush.
    pub const FLUSH: u16 = 3;
    /// Trim.
    pub const TRIM: u16 = 4;
    /// Cache (prefetch).
    pub const CACHE: u16 = 5;
    /// Write zeroes.
    pub const WRITE_ZEROES: u16 = 6;
    /// Block status.
    pub const BLOCK_STATUS: u16 = 7;

    /// Command flag: don't fragment.
    pub const FLAG_DF: u16 = 1 << 2;
    /// Command flag: one descriptor only.
    pub const FLAG_REQ_ONE: u16 = 1 << 3;

    /// A readable command name.
    pub fn name(c: u16) -> &'static str {
        match c {
            READ => "NBD_CMD_READ",
            WRITE => "NBD_CMD_WRITE",
            DISC => "NBD_CMD_DISC",
            FLUSH => "NBD_CMD_FLUSH",
            TRIM => "NBD_CMD_TRIM",
            CACHE => "NBD_CMD_CACHE",
            WRITE_ZEROES => "NBD_CMD_WRITE_ZEROES",
            BLOCK_STATUS => "NBD_CMD_BLOCK_STATUS",
            _ => "unknown command",
        }
    }
}

/// Structured reply chunk types.
pub mod reply {
    /// Flag: last chunk of the reply.
    pub const FLAG_DONE: u16 = 1;
    /// No payload.
    pub const NONE: u16 = 0;
    /// Offset and data.
    pub const OFFSET_DATA: u16 = 1;
    /// Offset and length of zeros.
    pub const OFFSET_HOLE: u16 = 2;
    /// Block status descriptors.
    pub const BLOCK_STATUS: u16 = 5;
    /// Error.
    pub const ERROR: u16 = (1 << 15) + 1;
    /// Error at an offset.
    pub const ERROR_OFFSET: u16 = (1 << 15) + 2;
}

/// NBD error values.
pub mod errno {
    /// Not permitted (write to a read-only export).
    pub const EPERM: u32 = 1;
    /// I/O error.
    pub const EIO: u32 = 5;
    /// Invalid argument (unknown command, out of range).
    pub const EINVAL: u32 = 22;
    /// Write past the end.
    pub const ENOSPC: u32 = 28;
    /// Value too large.
    pub const EOVERFLOW: u32 = 75;
    /// Not supported.
    pub const ENOTSUP: u32 = 95;
    /// Shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// `base:allocation` status bit: not allocated.
pub const STATE_HOLE: u32 = 1;
/// `base:allocation` status bit: reads as zeros.
pub const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:*` status bit: dirty.
pub const STATE_DIRTY: u32 = 1;

/// Name of the allocation context.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// Prefix of qemu's dirty bitmap contexts.
pub const QEMU_DIRTY_BITMAP: &str = "qemu:dirty-bitmap:";

/// Largest option reply payload we accept (export lists and strings are small).
pub const MAX_OPTION_REPLY: u32 = 1 << 20;
/// Largest option request payload a server accepts.
pub const MAX_OPTION_REQUEST: u32 = 64 << 10;
/// Largest non-data reply chunk payload (qemu sends up to 128 Ki descriptors of 8 bytes).
pub const MAX_CHUNK_PAYLOAD: u32 = 4 << 20;
/// Largest string the protocol allows.
pub const MAX_STRING: usize = 4096;

fn be16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_be_bytes(a)
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn need(what: &'static str, b: &[u8], n: usize) -> Result<(), ProtocolError> {
    if b.len() < n {
        Err(ProtocolError::Truncated {
            what,
            len: b.len() as u64,
        })
    } else {
        Ok(())
    }
}

fn string(what: &'static str, b: &[u8]) -> Result<String, ProtocolError> {
    if b.len() > MAX_STRING {
        return Err(ProtocolError::Oversized {
            what,
            len: b.len() as u64,
            max: MAX_STRING as u64,
        });
    }
    Ok(String::from_utf8_lossy(b).into_owned())
}

/// Header of an option reply (20 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptReplyHeader {
    /// Option answered.
    pub option: u32,
    /// Reply type.
    pub typ: u32,
    /// Payload length.
    pub len: u32,
}

impl OptReplyHeader {
    /// Size on the wire.
    pub const SIZE: usize = 20;

    /// Parses and checks magic and length.
    pub fn parse(b: &[u8]) -> Result<Self, ProtocolError> {
        need("option reply header", b, Self::SIZE)?;
        let magic = be64(b, 0);
        if magic != OPT_REPLY_MAGIC {
            return Err(ProtocolError::BadMagic {
                what: "option reply",
                found: magic,
            });
        }
        let h = OptReplyHeader {
            option: be32(b, 8),
            typ: be32(b, 12),
            len: be32(b, 16),
        };
        if h.len > MAX_OPTION_REPLY {
            return Err(ProtocolError::Oversized {
                what: "option reply",
                len: u64::from(h.len),
                max: u64::from(MAX_OPTION_REPLY),
            });
        }
        Ok(h)
    }

    /// Encodes a header.
    pub fn encode(option: u32, typ: u32, len: u32) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..8].copy_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
        b[8..12].copy_from_slice(&option.to_be_bytes());
        b[12..16].copy_from_slice(&typ.to_be_bytes());
        b[16..20].copy_from_slice(&len.to_be_bytes());
        b
    }
}

/// Encodes an option request.
pub fn encode_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// Data of `NBD_OPT_GO`/`NBD_OPT_INFO`: export name and the info types requested.
pub fn encode_go(export: &str, infos: &[u16]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(export.len() as u32).to_be_bytes());
    b.extend_from_slice(export.as_bytes());
    b.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        b.extend_from_slice(&i.to_be_bytes());
    }
    b
}

/// Data of `NBD_OPT_SET_META_CONTEXT`/`LIST_META_CONTEXT`.
pub fn encode_meta_query(export: &str, queries: &[String]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(export.len() as u32).to_be_bytes());
    b.extend_from_slice(export.as_bytes());
    b.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        b.extend_from_slice(&(q.len() as u32).to_be_bytes());
        b.extend_from_slice(q.as_bytes());
    }
    b
}

/// Parses `NBD_OPT_GO`/`INFO` data (server side).
pub fn parse_go(b: &[u8]) -> Result<(String, Vec<u16>), ProtocolError> {
    need("NBD_OPT_GO data", b, 4)?;
    let n = be32(b, 0) as usize;
    need(
        "NBD_OPT_GO data",
        b,
        4usize.saturating_add(n).saturating_add(2),
    )?;
    let name = string("export name", &b[4..4 + n])?;
    let count = be16(b, 4 + n) as usize;
    let rest = &b[6 + n..];
    if rest.len() != count * 2 {
        return Err(ProtocolError::Other(
            "NBD_OPT_GO info list has the wrong length".into(),
        ));
    }
    let infos = (0..count).map(|i| be16(rest, i * 2)).collect();
    Ok((name, infos))
}

/// Parses `NBD_OPT_*_META_CONTEXT` data (server side).
pub fn parse_meta_query(b: &[u8]) -> Result<(String, Vec<String>), ProtocolError> {
    need("meta context data", b, 4)?;
    let n = be32(b, 0) as usize;
    need(
        "meta context data",
        b,
        4usize.saturating_add(n).saturating_add(4),
    )?;
    let name = string("export name", &b[4..4 + n])?;
    let count = be32(b, 4 + n) as usize;
    let mut pos = 8 + n;
    let mut queries = Vec::new();
    for _ in 0..count {
        need("meta context query", &b[pos.min(b.len())..], 4)?;
        let l = be32(b, pos) as usize;
        pos += 4;
        need("meta context query", &b[pos.min(b.len())..], l)?;
        queries.push(string("meta context query", &b[pos..pos + l])?);
        pos += l;
    }
    if pos != b.len() {
        return Err(ProtocolError::Other(
            "meta context data has trailing bytes".into(),
        ));
    }
    Ok((name, queries))
}

/// An `NBD_REP_INFO` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// Size and transmission flags.
    Export {
        /// Size in bytes.
        size: u64,
        /// Transmission flags.
        flags: u16,
    },
    /// Canonical name.
    Name(String),
    /// Description.
    Description(String),
    /// Block size constraints.
    BlockSize {
        /// Minimum.
        min: u32,
        /// Preferred.
        preferred: u32,
        /// Maximum.
        max: u32,
    },
    /// An info type we do not know (ignored).
    Unknown(u16),
}

/// Parses an `NBD_REP_INFO` payload.
pub fn parse_info(b: &[u8]) -> Result<Info, ProtocolError> {
    need("NBD_REP_INFO", b, 2)?;
    let exact = |n: usize| {
        if b.len() == n {
            Ok(())
        } else {
            Err(ProtocolError::Other(format!(
                "NBD_REP_INFO type {} has {} bytes, expected {n}",
                be16(b, 0),
                b.len()
            )))
        }
    };
    Ok(match be16(b, 0) {
        info::EXPORT => {
            exact(12)?;
            Info::Export {
                size: be64(b, 2),
                flags: be16(b, 10),
            }
        }
        info::NAME => Info::Name(string("export name", &b[2..])?),
        info::DESCRIPTION => Info::Description(string("export description", &b[2..])?),
        info::BLOCK_SIZE => {
            exact(14)?;
            Info::BlockSize {
                min: be32(b, 2),
                preferred: be32(b, 6),
                max: be32(b, 10),
            }
        }
        t => Info::Unknown(t),
    })
}

/// Parses `NBD_REP_SERVER`: export name and description.
pub fn parse_server(b: &[u8]) -> Result<(String, String), ProtocolError> {
    need("NBD_REP_SERVER", b, 4)?;
    let n = be32(b, 0) as usize;
    need("NBD_REP_SERVER", b, 4usize.saturating_add(n))?;
    Ok((
        string("export name", &b[4..4 + n])?,
        string("export description", &b[4 + n..])?,
    ))
}

/// Parses `NBD_REP_META_CONTEXT`: context id and name.
pub fn parse_meta_context(b: &[u8]) -> Result<(u32, String), ProtocolError> {
    need("NBD_REP_META_CONTEXT", b, 4)?;
    Ok((be32(b, 0), string("meta context name", &b[4..])?))
}

/// Encodes a transmission request (28 bytes).
pub fn encode_request(flags: u16, typ: u16, handle: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&typ.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&len.to_be_bytes());
    b
}

/// A transmission request (server side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command.
    pub typ: u16,
    /// Handle (cookie).
    pub handle: u64,
    /// Offset.
    pub offset: u64,
    /// Length.
    pub len: u32,
}

impl Request {
    /// Parses a request header.
    pub fn parse(b: &[u8]) -> Result<Self, ProtocolError> {
        need("request", b, 28)?;
        let magic = be32(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(ProtocolError::BadMagic {
                what: "request",
                found: u64::from(magic),
            });
        }
        Ok(Request {
            flags: be16(b, 4),
            typ: be16(b, 6),
            handle: be64(b, 8),
            offset: be64(b, 16),
            len: be32(b, 24),
        })
    }
}

/// The header of a transmission reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply (16 bytes).
    Simple {
        /// Error value, 0 for success.
        error: u32,
        /// Handle.
        handle: u64,
    },
    /// A structured reply chunk (20 bytes).
    Chunk {
        /// Chunk flags.
        flags: u16,
        /// Chunk type.
        typ: u16,
        /// Handle.
        handle: u64,
        /// Payload length.
        len: u32,
    },
}

impl ReplyHeader {
    /// Bytes a header starting with `magic` has in total, or a bad-magic error.
    pub fn size_for_magic(magic: u32) -> Result<usize, ProtocolError> {
        match magic {
            SIMPLE_REPLY_MAGIC => Ok(16),
            STRUCTURED_REPLY_MAGIC => Ok(20),
            m => Err(ProtocolError::BadMagic {
                what: "reply",
                found: u64::from(m),
            }),
        }
    }

    /// Parses a whole header (16 or 20 bytes, as [`ReplyHeader::size_for_magic`] says).
    pub fn parse(b: &[u8]) -> Result<Self, ProtocolError> {
        need("reply header", b, 4)?;
        let size = Self::size_for_magic(be32(b, 0))?;
        need("reply header", b, size)?;
        Ok(if size == 16 {
            ReplyHeader::Simple {
                error: be32(b, 4),
                handle: be64(b, 8),
            }
        } else {
            ReplyHeader::Chunk {
                flags: be16(b, 4),
                typ: be16(b, 6),
                handle: be64(b, 8),
                len: be32(b, 16),
            }
        })
    }

    /// The handle.
    pub fn handle(&self) -> u64 {
        match *self {
            ReplyHeader::Simple { handle, .. } | ReplyHeader::Chunk { handle, .. } => handle,
        }
    }
}

/// Encodes a simple reply header.
pub fn encode_simple_reply(error: u32, handle: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b
}

/// Encodes a structured reply chunk header.
pub fn encode_chunk_header(flags: u16, typ: u16, handle: u64, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&typ.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// An error chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorChunk {
    /// Error value.
    pub errno: u32,
    /// Message.
    pub message: String,
    /// Offset, for `NBD_REPLY_TYPE_ERROR_OFFSET`.
    pub offset: Option<u64>,
}

/// Parses the payload of an error chunk.
pub fn parse_error_chunk(typ: u16, b: &[u8]) -> Result<ErrorChunk, ProtocolError> {
    need("error chunk", b, 6)?;
    let errno = be32(b, 0);
    let mlen = usize::from(be16(b, 4));
    let tail = if typ == reply::ERROR_OFFSET { 8 } else { 0 };
    if b.len() < 6 + mlen + tail {
        return Err(ProtocolError::Other(format!(
            "error chunk message of {mlen} bytes does not fit a {}-byte chunk",
            b.len()
        )));
    }
    let message = string("error message", &b[6..6 + mlen])?;
    let offset = (typ == reply::ERROR_OFFSET).then(|| be64(b, 6 + mlen));
    Ok(ErrorChunk {
        errno: if errno == 0 { errno::EIO } else { errno },
        message,
        offset,
    })
}

/// Encodes an error chunk payload (`NBD_REPLY_TYPE_ERROR`).
pub fn encode_error_payload(errno: u32, message: &str) -> Vec<u8> {
    let m = &message.as_bytes()[..message.len().min(MAX_STRING)];
    let mut b = Vec::with_capacity(6 + m.len());
    b.extend_from_slice(&errno.to_be_bytes());
    b.extend_from_slice(&(m.len() as u16).to_be_bytes());
    b.extend_from_slice(m);
    b
}

/// Parses an `NBD_REPLY_TYPE_OFFSET_HOLE` payload: offset and length.
pub fn parse_hole(b: &[u8]) -> Result<(u64, u32), ProtocolError> {
    if b.len() != 12 {
        return Err(ProtocolError::Other(format!(
            "hole chunk has {} bytes, expected 12",
            b.len()
        )));
    }
    Ok((be64(b, 0), be32(b, 8)))
}

/// A block status chunk: context id and (length, flags) descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockStatusChunk {
    /// Context id.
    pub context: u32,
    /// Descriptors in order from the request offset.
    pub descriptors: Vec<(u32, u32)>,
}

/// Parses an `NBD_REPLY_TYPE_BLOCK_STATUS` payload.
pub fn parse_block_status(b: &[u8]) -> Result<BlockStatusChunk, ProtocolError> {
    if b.len() < 12 || (b.len() - 4) & 7 != 0 {
        return Err(ProtocolError::Other(format!(
            "block status chunk has {} bytes, not 4 + 8n with n >= 1",
            b.len()
        )));
    }
    let context = be32(b, 0);
    let descriptors = b[4..]
        .chunks_exact(8)
        .map(|d| (be32(d, 0), be32(d, 4)))
        .collect();
    Ok(BlockStatusChunk {
        context,
        descriptors,
    })
}

/// Checks a block status chunk against the request and returns its extents.
///
/// Descriptors must cover at least one byte, none may be empty, and together they must
/// not run past the requested range.
pub fn check_block_status(
    chunk: &BlockStatusChunk,
    req_offset: u64,
    req_len: u32,
) -> Result<Vec<StatusExtent>, ProtocolError> {
    let bad = |why: String| ProtocolError::BlockStatus {
        context: chunk.context,
        why,
    };
    let mut pos = req_offset;
    let end = req_offset + u64::from(req_len);
    let mut out = Vec::with_capacity(chunk.descriptors.len());
    for &(len, flags) in &chunk.descriptors {
        if len == 0 {
            return Err(bad("a descriptor of length 0".into()));
        }
        let next = pos + u64::from(len);
        if next > end {
            return Err(bad(format!(
                "descriptors reach {next}, past the requested range [{req_offset}, {end})"
            )));
        }
        out.push(StatusExtent {
            offset: pos,
            len: u64::from(len),
            flags,
        });
        pos = next;
    }
    Ok(out)
}

/// One run of a metadata context: `flags` hold for `[offset, offset+len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusExtent {
    /// Start.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// Context-defined status flags.
    pub flags: u32,
}

/// Merges adjacent extents with equal flags.
pub fn merge_extents(ext: impl IntoIterator<Item = StatusExtent>) -> Vec<StatusExtent> {
    let mut out: Vec<StatusExtent> = Vec::new();
    for e in ext {
        match out.last_mut() {
            Some(l) if l.flags == e.flags && l.offset + l.len == e.offset => l.len += e.len,
            _ => out.push(e),
        }
    }
    out
}

/// Tracks which bytes of a read request the reply chunks have covered.
///
/// Chunks may arrive in any order, but must stay inside the request and must not overlap.
#[derive(Debug, Clone)]
pub struct ReadCoverage {
    offset: u64,
    len: u64,
    covered: u64,
    // start -> end of every accepted chunk, to detect overlaps in O(log n).
    runs: BTreeMap<u64, u64>,
}

impl ReadCoverage {
    /// A read of `len` bytes at `offset`.
    pub fn new(offset: u64, len: u64) -> Self {
        ReadCoverage {
            offset,
            len,
            covered: 0,
            runs: BTreeMap::new(),
        }
    }

    /// Accepts a chunk for `[offset, offset+len)` and returns its position in the buffer.
    pub fn accept(
        &mut self,
        offset: u64,
        len: u64,
    ) -> Result<std::ops::Range<usize>, ProtocolError> {
        let bad = || ProtocolError::ChunkRange {
            offset,
            len,
            req_offset: self.offset,
            req_len: self.len,
        };
        let end = offset.checked_add(len).ok_or_else(bad)?;
        if len == 0 || offset < self.offset || end > self.offset + self.len {
            return Err(bad());
        }
        if let Some((_, &e)) = self.runs.range(..end).next_back() {
            if e > offset {
                return Err(bad());
            }
        }
        self.runs.insert(offset, end);
        self.covered += len;
        let at = (offset - self.offset) as usize;
        Ok(at..at + len as usize)
    }

    /// Offset of the request.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length of the request.
    pub fn request_len(&self) -> u64 {
        self.len
    }

    /// Bytes covered so far.
    pub fn covered(&self) -> u64 {
        self.covered
    }

    /// True when every byte has been covered.
    pub fn complete(&self) -> bool {
        self.covered == self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_round_trip() {
        let b = encode_request(1, cmd::READ, 42, 4096, 512);
        let r = Request::parse(&b).unwrap();
        assert_eq!(
            r,
            Request {
                flags: 1,
                typ: cmd::READ,
                handle: 42,
                offset: 4096,
                len: 512
            }
        );
    }

    #[test]
    fn coverage_rejects_overlap_and_outside() {
        let mut c = ReadCoverage::new(1000, 100);
        assert_eq!(c.accept(1050, 50).unwrap(), 50..100);
        assert!(c.accept(1049, 2).is_err());
        assert!(c.accept(999, 1).is_err());
        assert!(c.accept(1100, 1).is_err());
        assert!(c.accept(1000, 0).is_err());
        assert_eq!(c.accept(1000, 50).unwrap(), 0..50);
        assert!(c.complete());
    }

    #[test]
    fn block_status_range_is_checked() {
        let chunk = BlockStatusChunk {
            context: 1,
            descriptors: vec![(512, 0), (512, 3)],
        };
        assert_eq!(check_block_status(&chunk, 0, 1024).unwrap().len(), 2);
        assert!(matches!(
            check_block_status(&chunk, 0, 1000),
            Err(ProtocolError::BlockStatus { .. })
        ));
    }

    #[test]
    fn error_chunk_parses() {
        let p = encode_error_payload(errno::EPERM, "read-only");
        let e = parse_error_chunk(reply::ERROR, &p).unwrap();
        assert_eq!(e.errno, errno::EPERM);
        assert_eq!(e.message, "read-only");
        let mut p2 = p.clone();
        p2.extend_from_slice(&7u64.to_be_bytes());
        let e = parse_error_chunk(reply::ERROR_OFFSET, &p2).unwrap();
        assert_eq!(e.offset, Some(7));
        assert!(parse_error_chunk(reply::ERROR_OFFSET, &p).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200), typ in any::<u16>()) {
            let _ = OptReplyHeader::parse(&data);
            let _ = ReplyHeader::parse(&data);
            let _ = Request::parse(&data);
            let _ = parse_info(&data);
            let _ = parse_server(&data);
            let _ = parse_meta_context(&data);
            let _ = parse_go(&data);
            let _ = parse_meta_query(&data);
            let _ = parse_error_chunk(typ, &data);
            let _ = parse_hole(&data);
            if let Ok(bs) = parse_block_status(&data) {
                let _ = check_block_status(&bs, 0, u32::MAX);
            }
        }

        #[test]
        fn reply_header_round_trips(flags in any::<u16>(), typ in any::<u16>(), handle in any::<u64>(), len in any::<u32>(), error in any::<u32>()) {
            let h = ReplyHeader::parse(&encode_chunk_header(flags, typ, handle, len)).unwrap();
            prop_assert_eq!(h, ReplyHeader::Chunk { flags, typ, handle, len });
            let s = ReplyHeader::parse(&encode_simple_reply(error, handle)).unwrap();
            prop_assert_eq!(s, ReplyHeader::Simple { error, handle });
        }

        #[test]
        fn meta_query_round_trips(name in "[a-z]{0,10}", qs in proptest::collection::vec("[a-z:]{0,20}", 0..5)) {
            let b = encode_meta_query(&name, &qs);
            prop_assert_eq!(parse_meta_query(&b).unwrap(), (name, qs));
        }

        #[test]
        fn go_round_trips(name in "[a-z]{0,10}", infos in proptest::collection::vec(any::<u16>(), 0..5)) {
            prop_assert_eq!(parse_go(&encode_go(&name, &infos)).unwrap(), (name, infos));
        }

        #[test]
        fn coverage_accepts_disjoint_chunks(cuts in proptest::collection::btree_set(1u64..1000, 0..20)) {
            // Split [0, 1000) at the cuts and feed the pieces in reverse order.
            let mut points: Vec<u64> = vec![0];
            points.extend(cuts.iter().copied());
            points.push(1000);
            let mut c = ReadCoverage::new(0, 1000);
            for w in points.windows(2).rev() {
                c.accept(w[0], w[1] - w[0]).unwrap();
            }
            prop_assert!(c.complete());
        }
    }
}
