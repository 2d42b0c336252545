//! Ferry's vSphere client (vim25 SOAP over HTTPS) and the VM-level backup job.
//!
//! # What this crate owns
//! - [`client`]: the session (service content, login, cookie, re-login), raw SOAP calls;
//! - [`tls`]: CA-bundle trust or SHA-256 thumbprint pinning with trust on first use;
//! - [`xml`] and [`soap`]: the bounded, namespace-aware response parser and typed faults;
//! - [`inventory`]: property collector, VM lookup, disks, snapshot tree;
//! - [`task`], [`snapshot`]: tasks, snapshots, CBT (`QueryChangedDiskAreas`);
//! - [`datastore`]: `/folder` HTTPS range reads (the VMDK reader's byte source) and PUT;
//! - [`job`]: `backup_vm` and the disk restores, on top of `ferry-archive` and `ferry-vmdk`;
//! - [`restore`]: a whole VM restored as a new VM (disks uploaded, then `CreateVM_Task`);
//! - [`tags`]: the VMs carrying a vSphere tag, through the vAPI REST API (tagging is not
//!   in SOAP).
//!
//! It deliberately does not parse VMDK files (that is `ferry-vmdk`), store anything (that
//! is `ferry-archive`), or speak NFC (later). Passwords and session cookies never reach a
//! log line or an error message.

pub mod client;
pub mod datastore;
pub mod error;
pub mod inventory;
pub mod job;
pub mod restore;
pub mod snapshot;
pub mod soap;
pub mod tags;
pub mod task;
pub mod tls;
pub mod xml;

pub use client::{Client, ConnectOptions, Credentials, Secret, ServiceContent};
pub use datastore::{Datastore, DatastoreFile, DatastorePath, DatastoreResolver, TransferStats};
pub use error::{FaultKind, Result, VsphereError};
pub use inventory::{SnapshotNode, VirtualDisk, VmInfo, VmSelector};
pub use job::{
    backup_vm, restore_disk_to_datastore, restore_disk_to_file, VmBackupOptions, VmBackupReport,
};
pub use restore::{restore_vm, VmRestoreOptions, VmRestoreReport};
pub use snapshot::{TakenSnapshot, SNAPSHOT_PREFIX};
pub use soap::MoRef;
pub use tags::{TagSpec, VapiDialect};
pub use tls::Trust;
