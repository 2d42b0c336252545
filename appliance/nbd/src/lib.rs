//! NBD for Ferry: an async client that reads VM disks from any NBD server, and a read-only
//! server that exposes a restore point ("instant access").
//!
//! # What this crate owns
//! - The NBD wire protocol as `doc/proto.md` of the NetworkBlockDevice project defines it:
//!   fixed newstyle handshake, `NBD_OPT_GO`/`INFO`/`LIST`, `NBD_OPT_STARTTLS`, structured
//!   replies, metadata contexts (`base:allocation`, `qemu:dirty-bitmap:NAME`) and
//!   `NBD_CMD_BLOCK_STATUS` ([`proto`], [`client`], [`server`]).
//! - NBD URIs: `nbd://`, `nbds://`, `nbd+unix://`, `nbds+unix://` ([`uri`]).
//! - TLS through rustls with the ring provider: CA verification or a certificate pin, and
//!   client certificates ([`tls`]).
//! - [`NbdSource`], the backup engine's [`ferry_archive::BlockSource`] over NBD, with holes
//!   from `base:allocation` and the changed map from a dirty bitmap.
//! - [`server::serve`]: one disk of a restore point as a read-only export, reading chunks
//!   on demand through `ferry_archive`.
//!
//! It does not own the backup format (`ferry-archive`), storage, or the CLI that wires
//! `ferry serve-nbd` and `--source nbd://…`.
//!
//! # Why not an existing crate
//! The `nbd` (0.3) and `tokio-nbd` crates implement neither structured replies, nor block
//! status, nor TLS, and the first is synchronous. Reading only allocated data, reading only
//! what a dirty bitmap marks, and talking to `nbdkit --tls=require` all need those, so this
//! crate implements the protocol itself on tokio.
//!
//! # Use
//! Reading a disk for a backup (with a dirty bitmap for an incremental):
//! ```no_run
//! # async fn f() -> Result<(), ferry_nbd::NbdError> {
//! use ferry_nbd::{ClientOptions, ClientTls, NbdSource, ServerTrust};
//! let pin = ClientTls::parse_pin("ab:cd:...")?;
//! let opts = ClientOptions::default().with_tls(ClientTls::new(ServerTrust::Pin(pin), None)?);
//! let source = NbdSource::connect("nbds://esx-proxy:10809/disk0", Some("bitmap0"), opts).await?;
//! // `source` is a `ferry_archive::BlockSource`: hand it to `ferry_archive::backup`.
//! # Ok(()) }
//! ```
//! Serving disk 0 of a restore point until Ctrl-C:
//! ```no_run
//! # async fn f(repo: ferry_archive::Repository) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let manifest = repo.resolve_point("latest", None).await?;
//! let export = Arc::new(ferry_nbd::Export::open(repo, &manifest, 0).await?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:10809").await?;
//! let stop = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! ferry_nbd::serve_until(listener, export, ferry_nbd::ServeOptions::default(), stop).await?;
//! # Ok(()) }
//! ```
//!
//! # Robustness
//! Every network wait has a timeout. A reply that breaks the protocol (bad magic, unknown
//! handle, oversized or out-of-range chunk, block status past the request) fails the
//! connection with a typed [`ProtocolError`]; the requests in flight get that error, never a
//! panic or a hang. The parsers are fuzzed (`fuzz/`) and property-tested.

pub mod client;
pub mod error;
pub mod io;
pub mod proto;
pub mod server;
pub mod source;
pub mod tls;
pub mod uri;

pub use client::{export_info, list_exports, ClientOptions, ExportEntry, ExportInfo, NbdClient};
pub use error::{NbdError, ProtocolError};
pub use proto::StatusExtent;
pub use server::{serve, serve_until, Export, Listener, ServeOptions};
pub use source::NbdSource;
pub use tls::{ClientTls, ServerTls, ServerTrust};
pub use uri::{Endpoint, NbdUri};
