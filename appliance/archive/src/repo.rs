//! The repository: its config, object keys, manifests and indexes.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use ferry_storage::Store;
use serde::{Deserialize, Serialize};

use crate::format::{self, digest_hex, Digest, Index, Kind};
use crate::ArchiveError;

/// Repository-wide settings, stored in `config`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoConfig {
    /// Repository format version.
    pub format: u32,
    /// Random repository id.
    pub id: String,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// Default chunk size for new backups.
    pub chunk_size: u32,
    /// Default zstd level.
    pub compression_level: i32,
}

/// Current repository format.
pub const REPO_FORMAT: u32 = 1;

/// Per-disk statistics of one backup.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskStats {
    /// Bytes read from the source.
    pub read: u64,
    /// Plain bytes of chunks that were new to the repository.
    pub new: u64,
    /// Plain bytes of chunks that were read and already in the repository.
    pub reused: u64,
    /// Bytes of chunks that read as zeros (holes or written zeros).
    pub zero: u64,
    /// Bytes taken from the parent index without reading (unchanged per the changed map).
    pub inherited: u64,
    /// Bytes written to storage for new chunks (compressed, with headers).
    pub stored: u64,
    /// Chunks written.
    pub new_chunks: u64,
}

impl DiskStats {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &DiskStats) {
        self.read += o.read;
        self.new += o.new;
        self.reused += o.reused;
        self.zero += o.zero;
        self.inherited += o.inherited;
        self.stored += o.stored;
        self.new_chunks += o.new_chunks;
    }
}

/// One disk of a restore point.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskEntry {
    /// Disk name (file name, or the VM's disk label).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Key of the index object.
    pub index: String,
    /// SHA-256 of the index object, checked on load.
    pub index_sha256: String,
    /// vSphere CBT changeId (or another change token) the backup was taken at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
    /// What the backup read and wrote.
    pub stats: DiskStats,
    /// Transport-specific facts (datastore path, disk key, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

/// A restore point: written last, and the only thing that makes a backup visible.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Repository format version.
    pub format: u32,
    /// Restore point id.
    pub id: String,
    /// Backup group (the VM or source name); retention applies per group.
    pub group: String,
    /// Start of the backup, seconds since the epoch.
    pub created: i64,
    /// End of the backup.
    pub finished: i64,
    /// The restore point this one was derived from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Compression algorithm.
    pub compression: String,
    /// zstd level.
    pub compression_level: i32,
    /// Disks in order.
    pub disks: Vec<DiskEntry>,
    /// Source-level facts (VM name, moref, instance UUID, snapshot, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

impl Manifest {
    /// Logical size of all disks.
    pub fn total_size(&self) -> u64 {
        self.disks.iter().map(|d| d.size).sum()
    }

    /// Summed statistics of all disks.
    pub fn stats(&self) -> DiskStats {
        let mut s = DiskStats::default();
        for d in &self.disks {
            s.add(&d.stats);
        }
        s
    }
}

/// Key of a chunk object.
pub fn chunk_key(d: &Digest) -> String {
    let h = digest_hex(d);
    format!("chunks/{}/{}", &h[..2], h)
}

/// Key of a manifest.
pub fn manifest_key(id: &str) -> String {
    format!("points/{id}/manifest")
}

/// Key of a disk index.
pub fn index_key(id: &str, disk: usize) -> String {
    format!("points/{id}/disk-{disk}.index")
}

/// Checks the shape of a restore point id (it becomes part of object keys).
pub fn validate_point_id(id: &str) -> Result<(), ArchiveError> {
    let ok = id.len() <= 64
        && !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ArchiveError::NotFound(format!("restore point {id:?}")))
    }
}

/// A new restore point id: UTC time to the millisecond, then random bits, so that ids sort
/// by time even for points taken within the same second.
pub fn new_point_id() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}-{:03}Z-{:08x}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond(),
        rand::random::<u32>()
    )
}

/// An open repository.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Arc<dyn Store>,
    config: RepoConfig,
}

impl Repository {
    /// Creates a repository in an empty location.
    pub async fn init(
        store: Arc<dyn Store>,
        chunk_size: u32,
        compression_level: i32,
    ) -> Result<Repository, ArchiveError> {
        check_chunk_size(chunk_size)?;
        check_level(compression_level)?;
        let config = RepoConfig {
            format: REPO_FORMAT,
            id: hex::encode(rand::random::<[u8; 16]>()),
            created: crate::now_secs(),
            chunk_size,
            compression_level,
        };
        let data = format::encode_json(Kind::Config, &config)?;
        if !store.put_new("config", Bytes::from(data)).await? {
            return Err(ArchiveError::AlreadyExists(store.location()));
        }
        store.sync().await?;
        Ok(Repository { store, config })
    }

    /// Opens an existing repository.
    pub async fn open(store: Arc<dyn Store>) -> Result<Repository, ArchiveError> {
        let data = match store.get("config").await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => return Err(ArchiveError::NoRepository(store.location())),
            Err(e) => return Err(e.into()),
        };
        let config: RepoConfig = format::decode_json(Kind::Config, &data, "repository config")?;
        if config.format > REPO_FORMAT {
            return Err(ArchiveError::NewerFormat {
                object: "repository".into(),
                found: u16::try_from(config.format).unwrap_or(u16::MAX),
                supported: REPO_FORMAT as u16,
            });
        }
        Ok(Repository { store, config })
    }

    /// The repository config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Ids of all committed restore points, oldest first.
    pub async fn list_point_ids(&self) -> Result<Vec<String>, ArchiveError> {
        let mut ids: Vec<String> = self
            .store
            .list("points/")
            .await?
            .into_iter()
            .filter_map(|o| {
                let rest = o.key.strip_prefix("points/")?;
                let (id, file) = rest.split_once('/')?;
                (file == "manifest").then(|| id.to_string())
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// All committed restore points, oldest first.
    pub async fn list_points(&self) -> Result<Vec<Manifest>, ArchiveError> {
        let mut out = Vec::new();
        for id in self.list_point_ids().await? {
            out.push(self.load_manifest(&id).await?);
        }
        Ok(out)
    }

    /// Loads a manifest.
    pub async fn load_manifest(&self, id: &str) -> Result<Manifest, ArchiveError> {
        validate_point_id(id)?;
        let data = match self.store.get(&manifest_key(id)).await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => {
                return Err(ArchiveError::NotFound(format!("restore point {id}")))
            }
            Err(e) => return Err(e.into()),
        };
        let m: Manifest = format::decode_json(Kind::Manifest, &data, &format!("manifest of {id}"))?;
        if m.id != id {
            return Err(ArchiveError::Corrupt {
                object: format!("manifest of {id}"),
                why: format!("names restore point {}", m.id),
            });
        }
        Ok(m)
    }

    /// Loads and checks the index of disk `n` of a manifest.
    pub async fn load_index(&self, m: &Manifest, n: usize) -> Result<Index, ArchiveError> {
        let disk = m
            .disks
            .get(n)
            .ok_or_else(|| ArchiveError::NotFound(format!("disk {n} of {}", m.id)))?;
        let what = format!("index of {} disk {n}", m.id);
        let data = match self.store.get(&disk.index).await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => {
                return Err(ArchiveError::Corrupt {
                    object: what,
                    why: "missing".into(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        if digest_hex(&format::digest_of(&data)) != disk.index_sha256 {
            return Err(ArchiveError::Corrupt {
                object: what,
                why: "does not match the SHA-256 in the manifest".into(),
            });
        }
        let idx = Index::decode(&data, &what)?;
        if idx.disk_size != disk.size || idx.chunk_size != m.chunk_size {
            return Err(ArchiveError::Corrupt {
                object: what,
                why: "disk or chunk size disagrees with the manifest".into(),
            });
        }
        Ok(idx)
    }

    /// Resolves a point reference: a full id, a unique id prefix, or `latest`
    /// (optionally within a group).
    pub async fn resolve_point(
        &self,
        reference: &str,
        group: Option<&str>,
    ) -> Result<Manifest, ArchiveError> {
        if reference == "latest" {
            let points = self.list_points().await?;
            return points
                .into_iter()
                .rev()
                .find(|m| group.is_none_or(|g| m.group == g))
                .ok_or_else(|| {
                    ArchiveError::NotFound(match group {
                        Some(g) => format!("any restore point of {g}"),
                        None => "any restore point".into(),
                    })
                });
        }
        let ids = self.list_point_ids().await?;
        let matches: Vec<&String> = ids.iter().filter(|i| i.starts_with(reference)).collect();
        match matches.as_slice() {
            [one] => self.load_manifest(one).await,
            [] => Err(ArchiveError::NotFound(format!("restore point {reference}"))),
            _ => Err(ArchiveError::Invalid {
                what: "restore point",
                why: format!("{reference:?} matches {} restore points", matches.len()),
            }),
        }
    }
}

/// Checks a chunk size.
pub fn check_chunk_size(cs: u32) -> Result<(), ArchiveError> {
    let ok = (format::MIN_CHUNK_SIZE..=format::MAX_CHUNK_SIZE).contains(&(cs as usize))
        && cs.is_multiple_of(4096);
    if ok {
        Ok(())
    } else {
        Err(ArchiveError::Invalid {
            what: "chunk size",
            why: format!("{cs} bytes: must be 1 to 16 MiB and a multiple of 4 KiB"),
        })
    }
}

/// Checks a zstd level.
pub fn check_level(level: i32) -> Result<(), ArchiveError> {
    if (1..=19).contains(&level) {
        Ok(())
    } else {
        Err(ArchiveError::Invalid {
            what: "compression level",
            why: format!("{level}: must be 1 to 19"),
        })
    }
}
