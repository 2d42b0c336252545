//! `ferry catalog list|show`: the management server's central catalog, the restore points
//! of every registered storage node, with an admin bundle (see [`crate::manage::Conn`]).
//!
//! A node that does not answer is reported (stderr, or `errors` in `--json`) and the other
//! nodes' points are still listed; the command succeeds unless the management server
//! itself fails.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use ferry_api::v1::{Catalog, CatalogPoint};

use crate::manage::{when, Conn};
use crate::output::{human_bytes, Reporter};

#[derive(Subcommand, Debug)]
pub enum CatalogCmd {
    /// List restore points across every storage node and vault.
    List {
        /// Only this VM (backup group).
        #[arg(long)]
        vm: Option<String>,
        /// Only this storage node (its id in `ferry mgmt nodes list`).
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// One restore point: its disks, sizes, stats and last verify.
    Show {
        /// Restore point id (or a unique prefix).
        point: String,
        #[command(flatten)]
        conn: Conn,
    },
}

fn logical(p: &CatalogPoint) -> u64 {
    p.entry.disks.iter().map(|d| d.size).sum()
}

fn verify_text(p: &CatalogPoint) -> String {
    match &p.entry.verify {
        None => "never".into(),
        Some(v) if v.ok => format!("ok {}", when(v.time)),
        Some(v) => format!(
            "DAMAGED {}{}",
            when(v.time),
            v.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
    }
}

fn warn_errors(rep: &Reporter, c: &Catalog) {
    if rep.is_json() {
        return;
    }
    for e in &c.errors {
        eprintln!(
            "warning: node {} ({}, {}) did not answer: {}",
            e.node_id, e.node_hostname, e.address, e.error
        );
    }
}

fn table(c: &Catalog) -> String {
    let mut s = format!(
        "{:<16}  {:<12} {:<20} {:<16} {:<20} {:>5} {:>10} {:>10}  {}",
        "NODE", "VAULT", "VM", "POINT", "TIME", "DISKS", "LOGICAL", "STORED", "VERIFY"
    );
    for p in &c.points {
        s.push_str(&format!(
            "\n{:<16}  {:<12} {:<20} {:<16} {:<20} {:>5} {:>10} {:>10}  {}",
            p.node_id,
            p.entry.vault,
            p.entry.group,
            p.entry.id,
            when(p.entry.created),
            p.entry.disks.len(),
            human_bytes(logical(p)),
            human_bytes(p.entry.stored),
            verify_text(p)
        ));
    }
    s.push_str(&format!(
        "\n{} restore point(s){}",
        c.points.len(),
        if c.errors.is_empty() {
            String::new()
        } else {
            format!("; {} node(s) did not answer", c.errors.len())
        }
    ));
    s
}

fn details(p: &CatalogPoint) -> String {
    let e = &p.entry;
    let total = logical(p);
    let mut s = format!(
        "restore point {}\nnode      {} ({})\nvault     {}\nVM        {}\nwritten by {}\nstarted   {}\nfinished  {} ({} s)\n",
        e.id,
        p.node_id,
        p.node_hostname,
        e.vault,
        e.group,
        e.owner,
        when(e.created),
        when(e.finished),
        (e.finished - e.created).max(0)
    );
    s.push_str(&format!("disks     {}\n", e.disks.len()));
    for d in &e.disks {
        s.push_str(&format!(
            "  {:<24} {:>10} ({} bytes)\n",
            d.name,
            human_bytes(d.size),
            d.size
        ));
    }
    s.push_str(&format!(
        "logical   {} ({total} bytes)\nstored    {} new in the vault ({} bytes)\n",
        human_bytes(total),
        human_bytes(e.stored),
        e.stored
    ));
    s.push_str(&format!("verify    {}", verify_text(p)));
    s
}

/// Runs a catalog command.
pub async fn catalog(cmd: &CatalogCmd, rep: &Reporter) -> anyhow::Result<ExitCode> {
    match cmd {
        CatalogCmd::List { vm, node, conn } => {
            let c = conn
                .client()?
                .catalog(node.as_deref(), vm.as_deref())
                .await?;
            warn_errors(rep, &c);
            rep.result(&c, || table(&c));
        }
        CatalogCmd::Show { point, conn } => {
            let c = conn.client()?.catalog(None, None).await?;
            let exact: Vec<&CatalogPoint> =
                c.points.iter().filter(|p| &p.entry.id == point).collect();
            let found = if exact.is_empty() {
                c.points
                    .iter()
                    .filter(|p| p.entry.id.starts_with(point.as_str()))
                    .collect()
            } else {
                exact
            };
            match found.as_slice() {
                [p] => {
                    warn_errors(rep, &c);
                    rep.result(p, || details(p));
                }
                [] => {
                    warn_errors(rep, &c);
                    if c.errors.is_empty() {
                        bail!("no restore point {point} on any storage node");
                    }
                    bail!(
                        "no restore point {point} on the nodes that answered ({} did not)",
                        c.errors.len()
                    );
                }
                many => bail!(
                    "{point} names {} restore points: {}",
                    many.len(),
                    many.iter()
                        .map(|p| format!("{} on {}/{}", p.entry.id, p.node_id, p.entry.vault))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
