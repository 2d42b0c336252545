//! [`NbdSource`]: an NBD export as a [`BlockSource`] for the backup engine.
//!
//! Allocation comes from `base:allocation` (holes and zero runs are never read), and the
//! changed-extent map from a `qemu:dirty-bitmap:NAME` context when one is requested.

use async_trait::async_trait;
use ferry_archive::{BlockSource, ChangedExtents, Extent, ExtentKind, SourceError};
use tokio::sync::OnceCell;

use crate::client::{ClientOptions, NbdClient};
use crate::error::NbdError;
use crate::proto::{self, StatusExtent};
use crate::uri::NbdUri;

/// An NBD export read as a backup source.
#[derive(Debug)]
pub struct NbdSource {
    client: NbdClient,
    dirty_context: Option<String>,
    changed: OnceCell<ChangedExtents>,
}

impl NbdSource {
    /// Connects to `uri` (`nbd://`, `nbds://`, `nbd+unix://`). With `dirty_bitmap`, the
    /// bitmap's context is negotiated too and must be granted; `changed()` then reports it.
    pub async fn connect(
        uri: &str,
        dirty_bitmap: Option<&str>,
        opts: ClientOptions,
    ) -> Result<NbdSource, NbdError> {
        let uri = NbdUri::parse(uri)?;
        let mut opts = opts;
        let dirty_context = dirty_bitmap.map(|b| format!("{}{b}", proto::QEMU_DIRTY_BITMAP));
        if let Some(c) = &dirty_context {
            if !opts.contexts.contains(c) {
                opts.contexts.push(c.clone());
            }
        }
        let client = NbdClient::connect(&uri, &opts).await?;
        if let Some(c) = &dirty_context {
            if !client.has_context(c) {
                client.disconnect().await;
                return Err(NbdError::Unsupported(format!(
                    "metadata context {c} (is the bitmap exported, e.g. qemu-nbd -B?)"
                )));
            }
        }
        Ok(NbdSource {
            client,
            dirty_context,
            changed: OnceCell::new(),
        })
    }

    /// Wraps a connected client; `dirty_context` is a full context name.
    pub fn from_client(client: NbdClient, dirty_context: Option<String>) -> NbdSource {
        NbdSource {
            client,
            dirty_context,
            changed: OnceCell::new(),
        }
    }

    /// The underlying client.
    pub fn client(&self) -> &NbdClient {
        &self.client
    }

    /// Disconnects cleanly.
    pub async fn close(self) {
        self.client.disconnect().await;
    }
}

/// Turns a `base:allocation` map into engine extents.
pub fn allocation_extents(map: &[StatusExtent]) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::with_capacity(map.len());
    for e in map {
        let kind = if e.flags & proto::STATE_ZERO != 0 {
            ExtentKind::Zero
        } else {
            ExtentKind::Data
        };
        match out.last_mut() {
            Some(l) if l.kind == kind && l.offset + l.len == e.offset => l.len += e.len,
            _ => out.push(Extent {
                offset: e.offset,
                len: e.len,
                kind,
            }),
        }
    }
    out
}

/// Turns a dirty bitmap map into changed extents.
pub fn dirty_extents(map: &[StatusExtent]) -> ChangedExtents {
    ChangedExtents::new(
        map.iter()
            .filter(|e| e.flags & proto::STATE_DIRTY != 0)
            .map(|e| e.offset..e.offset + e.len)
            .collect(),
    )
}

#[async_trait]
impl BlockSource for NbdSource {
    fn size(&self) -> u64 {
        self.client.size()
    }

    fn describe(&self) -> String {
        format!("nbd {}", self.client.uri())
    }

    async fn allocation(&self, offset: u64, len: u64) -> Result<Option<Vec<Extent>>, SourceError> {
        if !self.client.has_context(proto::BASE_ALLOCATION) {
            return Ok(None);
        }
        let map = self
            .client
            .block_status(proto::BASE_ALLOCATION, offset, len)
            .await?;
        Ok(Some(allocation_extents(&map)))
    }

    async fn changed(&self) -> Result<Option<ChangedExtents>, SourceError> {
        let Some(ctx) = &self.dirty_context else {
            return Ok(None);
        };
        let c = self
            .changed
            .get_or_try_init(|| async {
                let map = self.client.block_status(ctx, 0, self.client.size()).await?;
                Ok::<_, NbdError>(dirty_extents(&map))
            })
            .await?;
        Ok(Some(c.clone()))
    }

    async fn read_at(&self, offset: u64, buf: Vec<u8>) -> Result<Vec<u8>, SourceError> {
        Ok(self.client.read_at(offset, buf).await?)
    }
}
