//! Remote management: `ferry mgmt serve|token create|agents list|add|revoke`,
//! `ferry mgmt admins add|list|revoke`, `ferry mgmt nodes list|revoke`, `ferry plan apply|list`,
//! `ferry jobs list|show|run-now`, `ferry logs --agent`.
//!
//! Everything but `mgmt serve` talks to the management server (`--mgmt`, `FERRY_MGMT`)
//! with an admin bundle (`--admin-cert`, `FERRY_ADMIN_CERT`; the server writes the first
//! one to `<state>/admin.pem`, `admins add` writes the others, 0600).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ferry_api::v1::{Credential, JobRecord, PeerRole, PlanPush, ProgressEvent};
use ferry_api::Plan;
use ferry_mgmt::client::{AdminBundle, AdminClient};

use crate::output::{human_bytes, Reporter};

/// Where the management server is, and who the admin is.
#[derive(Args, Debug)]
pub struct Conn {
    /// Management server (`host:port` or `https://host:port`).
    #[arg(long, env = "FERRY_MGMT")]
    mgmt: Option<String>,
    /// Admin bundle: certificate, key and management CA (PEM).
    #[arg(long, env = "FERRY_ADMIN_CERT")]
    admin_cert: Option<PathBuf>,
}

impl Conn {
    pub(crate) fn client(&self) -> anyhow::Result<AdminClient> {
        let url = self
            .mgmt
            .as_deref()
            .context("say where the management server is: --mgmt HOST:PORT or FERRY_MGMT")?;
        let path = self
            .admin_cert
            .as_deref()
            .context("give an admin bundle: --admin-cert FILE or FERRY_ADMIN_CERT")?;
        let b = AdminBundle::load(path)?;
        Ok(AdminClient::new(url, &b)?)
    }
}

#[derive(Subcommand, Debug)]
pub enum MgmtCmd {
    /// Run the management server.
    Serve(ServeArgs),
    /// Enrollment tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// The agent registry.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Admins: each has its own client certificate.
    #[command(subcommand)]
    Admins(AdminsCmd),
    /// Storage nodes registered with the management server (`ferry-node enroll`).
    #[command(subcommand)]
    Nodes(NodesCmd),
}

#[derive(Subcommand, Debug)]
pub enum NodesCmd {
    /// List registered storage nodes.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a storage node: the management server refuses it and stops reading its catalog.
    Revoke {
        /// Node id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
pub enum AdminsCmd {
    /// Add an admin: makes a key here, has the server sign it, writes the bundle (0600).
    Add {
        /// Name: 1 to 32 of a-z, 0-9 and '-'.
        name: String,
        /// Where to write the new admin's bundle (certificate, key, CA; default
        /// `admin-NAME.pem`); an existing file is never overwritten.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List admins and whether they are revoked.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke an admin: the server refuses it at once, agents once they have the new
    /// revocation list (pushed to them now, fetched at their next contact).
    Revoke {
        /// Name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// State directory (CA, certificates, database).
    #[arg(long, env = "FERRY_MGMT_STATE")]
    state: PathBuf,
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0:9876")]
    listen: String,
    /// The URL agents use to reach this server (told to agents that pair).
    #[arg(long)]
    public_url: Option<String>,
    /// Seconds between collections of jobs and logs from every agent.
    #[arg(long, default_value_t = 60.0)]
    collect_every: f64,
    /// Turn the license service on: the licensee named in every license.
    #[arg(long)]
    license_licensee: Option<String>,
    /// License service: protected ESX hosts per license.
    #[arg(long, default_value_t = 1)]
    license_hosts: u32,
    /// License service: protected sockets per license.
    #[arg(long, default_value_t = 2)]
    license_sockets: u32,
    /// License service: days each license is valid.
    #[arg(long, default_value_t = 30)]
    license_days: u32,
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a one-time enrollment token.
    Create {
        /// Lifetime: seconds, or with s/m/h/d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Note kept with the token.
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentsCmd {
    /// List registered agents (storage nodes: `ferry mgmt nodes list`).
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Register an agent from this side, with the pairing code on its console.
    Add {
        /// The agent, `host:port`.
        address: String,
        /// The code shown on its console.
        #[arg(long)]
        pairing_code: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke an agent: the management server refuses it from now on.
    Revoke {
        /// Agent id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
pub enum PlanCmd {
    /// Deploy a plan (TOML or JSON) to an agent.
    Apply {
        /// The plan file.
        file: PathBuf,
        /// Agent id.
        #[arg(long)]
        agent: String,
        /// Credentials file (TOML: one table per name with `user`, `password`, `secrets`).
        #[arg(long)]
        credentials: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Check a plan file without deploying it.
    Check {
        /// The plan file.
        file: PathBuf,
    },
    /// Plans of an agent (without credentials).
    List {
        /// Agent id.
        #[arg(long)]
        agent: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
pub enum JobsCmd {
    /// Collected job records, newest first.
    List {
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Collect from the agent first.
        #[arg(long, requires = "agent")]
        collect: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// One job record in full.
    Show {
        /// Job id.
        id: String,
        /// Agent id.
        #[arg(long)]
        agent: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Run a plan now and follow its progress.
    RunNow {
        /// Plan name.
        plan: String,
        /// Agent id.
        #[arg(long)]
        agent: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Agent id.
    #[arg(long)]
    agent: String,
    /// Only lines after this cursor.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// At most this many lines.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Collect from the agent first.
    #[arg(long)]
    collect: bool,
    #[command(flatten)]
    conn: Conn,
}

/// Parses `90`, `90s`, `15m`, `1h`, `7d`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    let (n, mul) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1),
        Some('m') => (&t[..t.len() - 1], 60),
        Some('h') => (&t[..t.len() - 1], 3600),
        Some('d') => (&t[..t.len() - 1], 86400),
        _ => (t, 1),
    };
    let n: u64 = n
        .parse()
        .with_context(|| format!("invalid duration {s:?}"))?;
    Ok(Duration::from_secs(n * mul))
}

/// Reads a plan file: JSON when it ends in .json, else TOML.
pub fn read_plan(path: &std::path::Path) -> anyhow::Result<Plan> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let p = if path.extension().is_some_and(|e| e == "json") {
        Plan::from_json(&text)
    } else {
        Plan::from_toml(&text)
    };
    p.with_context(|| format!("plan {} is invalid", path.display()))
}

fn read_credentials(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, Credential>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    // Errors name the table and key, never a value.
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "credentials file {} is invalid: {}",
            path.display(),
            e.message()
        )
    })
}

pub(crate) fn when(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

fn job_line(agent: &str, r: &JobRecord) -> String {
    let ok = r.vms.iter().filter(|v| v.ok).count();
    let stored: u64 = r.vms.iter().map(|v| v.bytes_stored).sum();
    format!(
        "{agent}  {}  {:<10} {:<9} {:<10} {}/{} VMs  {} stored{}",
        r.id,
        r.plan,
        format!("{:?}", r.trigger).to_lowercase(),
        format!("{:?}", r.state).to_lowercase(),
        ok,
        r.vms.len(),
        human_bytes(stored),
        r.error
            .as_deref()
            .map(|e| format!("  ({e})"))
            .unwrap_or_default()
    )
}

fn job_detail(agent: &str, r: &JobRecord) -> String {
    let mut s = format!(
        "job {} of plan {} on agent {agent}\n  trigger {:?}, state {:?}, started {}, finished {}\n",
        r.id,
        r.plan,
        r.trigger,
        r.state,
        when(r.started_unix),
        r.finished_unix.map(when).unwrap_or_else(|| "-".into())
    );
    for v in &r.vms {
        s.push_str(&format!(
            "  VM {}: {} {} read {}, new {}, stored {}, {:.1}s{}\n",
            v.vm,
            if v.ok { "ok" } else { "FAILED" },
            v.point.as_deref().unwrap_or("-"),
            human_bytes(v.bytes_read),
            human_bytes(v.bytes_new),
            human_bytes(v.bytes_stored),
            v.duration_seconds,
            v.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
        for n in &v.notes {
            s.push_str(&format!("    note: {n}\n"));
        }
    }
    if !r.pruned.is_empty() {
        s.push_str(&format!("  retention removed: {}\n", r.pruned.join(", ")));
    }
    if let Some(v) = r.verified {
        s.push_str(&format!(
            "  verified: {}\n",
            if v { "ok" } else { "DAMAGED" }
        ));
    }
    if let Some(e) = &r.error {
        s.push_str(&format!("  error: {e}\n"));
    }
    s.trim_end().to_string()
}

pub async fn mgmt(cmd: &MgmtCmd, rep: &Reporter) -> anyhow::Result<ExitCode> {
    match cmd {
        MgmtCmd::Serve(a) => {
            let license = a
                .license_licensee
                .as_ref()
                .map(|l| ferry_mgmt::LicenseService {
                    licensee: l.clone(),
                    hosts: a.license_hosts,
                    sockets: a.license_sockets,
                    days: a.license_days,
                });
            let opts = ferry_mgmt::Options {
                state_dir: a.state.clone(),
                listen: a.listen.parse().context("--listen")?,
                public_url: a.public_url.clone(),
                collect_every: Duration::from_secs_f64(a.collect_every.max(0.1)),
                license,
            };
            let m = ferry_mgmt::Mgmt::open(opts)?;
            let listener = tokio::net::TcpListener::bind(&a.listen)
                .await
                .with_context(|| format!("bind {}", a.listen))?;
            let addr = listener.local_addr()?;
            // One line on stdout that scripts and tests can read.
            println!(
                "{}",
                serde_json::json!({
                    "listening": addr.to_string(),
                    "ca_sha256": m.ca.sha256(),
                    "admin_cert": a.state.join("admin.pem"),
                })
            );
            eprintln!(
                "ferry mgmt: listening on {addr}, CA sha256 {}",
                m.ca.sha256()
            );
            tokio::select! {
                r = ferry_mgmt::serve_on(m, listener) => r?,
                _ = tokio::signal::ctrl_c() => eprintln!("ferry mgmt: stopping"),
            }
        }
        MgmtCmd::Token(TokenCmd::Create { ttl, note, conn }) => {
            let t = conn
                .client()?
                .create_token(parse_duration(ttl)?, note.clone())
                .await?;
            rep.result(&t, || {
                format!(
                    "{}\n(one-time, expires {}; give it to the appliance as ferry.token)",
                    t.token,
                    when(t.expires_unix)
                )
            });
        }
        MgmtCmd::Agents(AgentsCmd::List { conn }) => {
            let v: Vec<_> = conn
                .client()?
                .agents()
                .await?
                .into_iter()
                .filter(|a| a.role == PeerRole::Agent)
                .collect();
            rep.result(&v, || {
                let mut s = format!(
                    "{:<16}  {:<20} {:<22} {:<8} {:<20} {}",
                    "ID", "HOSTNAME", "ADDRESS", "STATE", "LAST SEEN", "CERT SHA256"
                );
                for a in &v {
                    s.push_str(&format!(
                        "\n{:<16}  {:<20} {:<22} {:<8} {:<20} {}",
                        a.id,
                        a.hostname,
                        a.address,
                        a.state.as_str(),
                        a.last_seen_unix.map(when).unwrap_or_else(|| "-".into()),
                        &a.cert_sha256[..16.min(a.cert_sha256.len())]
                    ));
                }
                s
            });
        }
        MgmtCmd::Agents(AgentsCmd::Add {
            address,
            pairing_code,
            conn,
        }) => {
            let p = conn
                .client()?
                .pair_with_fingerprint(address, pairing_code)
                .await?;
            let a = &p.agent;
            rep.result(&p, || {
                format!(
                    "registered agent {} ({}) at {}\nappliance certificate sha256 {} \
                     (compare it with the appliance console)",
                    a.id, a.hostname, a.address, p.appliance_cert_sha256
                )
            });
        }
        MgmtCmd::Nodes(NodesCmd::List { conn }) => {
            let v: Vec<_> = conn
                .client()?
                .agents()
                .await?
                .into_iter()
                .filter(|a| a.role == PeerRole::Node)
                .collect();
            rep.result(&v, || {
                let mut s = format!(
                    "{:<16}  {:<20} {:<22} {:<20} {}",
                    "ID", "HOSTNAME", "ADDRESS", "LAST SEEN", "STATE"
                );
                for a in &v {
                    s.push_str(&format!(
                        "\n{:<16}  {:<20} {:<22} {:<20} {}",
                        a.id,
                        a.hostname,
                        a.address,
                        a.last_seen_unix.map(when).unwrap_or_else(|| "-".into()),
                        a.state.as_str(),
                    ));
                }
                s
            });
        }
        MgmtCmd::Nodes(NodesCmd::Revoke { id, conn }) => {
            let c = conn.client()?;
            let known = c.agents().await?.into_iter().find(|a| &a.id == id);
            if known.is_some_and(|a| a.role != PeerRole::Node) {
                bail!("{id} is an agent, not a storage node: ferry mgmt agents revoke {id}");
            }
            let a = c.revoke(id).await?;
            rep.result(&a, || format!("node {} is {}", a.id, a.state.as_str()));
        }
        MgmtCmd::Agents(AgentsCmd::Revoke { id, conn }) => {
            let a = conn.client()?.revoke(id).await?;
            rep.result(&a, || format!("agent {} is {}", a.id, a.state.as_str()));
        }
        MgmtCmd::Admins(AdminsCmd::Add { name, out, conn }) => {
            let out = out
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("admin-{name}.pem")));
            if out.exists() {
                bail!("{} exists; not overwriting an admin bundle", out.display());
            }
            let (bundle, info) = conn.client()?.add_admin(name).await?;
            bundle
                .save(&out)
                .with_context(|| format!("admin {name} was created; its key is lost"))?;
            let v = serde_json::json!({"admin": info, "bundle": out});
            rep.result(&v, || {
                format!(
                    "admin {} added; bundle (certificate, key, CA) in {} (0600)\nuse it with --admin-cert {} or FERRY_ADMIN_CERT",
                    info.name,
                    out.display(),
                    out.display()
                )
            });
        }
        MgmtCmd::Admins(AdminsCmd::List { conn }) => {
            let v = conn.client()?.admins().await?;
            rep.result(&v, || {
                let mut s = format!(
                    "{:<20} {:<8} {:<20} {}",
                    "NAME", "STATE", "CREATED", "CERT SHA256"
                );
                for a in &v {
                    s.push_str(&format!(
                        "\n{:<20} {:<8} {:<20} {}",
                        a.name,
                        if a.revoked_unix.is_some() {
                            "revoked"
                        } else {
                            "active"
                        },
                        when(a.created_unix),
                        &a.cert_sha256[..16.min(a.cert_sha256.len())]
                    ));
                }
                s
            });
        }
        MgmtCmd::Admins(AdminsCmd::Revoke { name, conn }) => {
            let a = conn.client()?.revoke_admin(name).await?;
            rep.result(&a, || format!("admin {} is revoked", a.name));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn plan(cmd: &PlanCmd, rep: &Reporter) -> anyhow::Result<ExitCode> {
    match cmd {
        PlanCmd::Check { file } => {
            let p = read_plan(file)?;
            rep.result(&p, || format!("plan {} is valid", p.name));
        }
        PlanCmd::Apply {
            file,
            agent,
            credentials,
            conn,
        } => {
            let plan = read_plan(file)?;
            let all = match credentials {
                Some(f) => read_credentials(f)?,
                None => BTreeMap::new(),
            };
            let mut creds = BTreeMap::new();
            for n in plan.credential_names() {
                let c = all.get(&n).with_context(|| {
                    format!("the plan names credential {n:?}; put it in --credentials")
                })?;
                creds.insert(n, c.clone());
            }
            let push = PlanPush {
                plan,
                credentials: creds,
            };
            let s = conn.client()?.apply_plan(agent, &push).await?;
            rep.result(&s, || {
                format!(
                    "plan {} deployed to agent {agent}; next run {}",
                    s.plan.name,
                    s.next_run_unix.map(when).unwrap_or_else(|| "-".into())
                )
            });
        }
        PlanCmd::List { agent, conn } => {
            let v = conn.client()?.plans(agent).await?;
            rep.result(&v, || {
                v.iter()
                    .map(|p| {
                        format!(
                            "{}  schedule {:?}  credentials {}",
                            p.plan.name,
                            p.plan.schedule,
                            p.credentials.join(",")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn jobs(cmd: &JobsCmd, rep: &Reporter) -> anyhow::Result<ExitCode> {
    match cmd {
        JobsCmd::List {
            agent,
            limit,
            collect,
            conn,
        } => {
            let c = conn.client()?;
            if let (true, Some(a)) = (*collect, agent) {
                c.collect(a).await?;
            }
            let v = c.jobs(agent.as_deref(), *limit).await?;
            rep.result(&v, || {
                v.iter()
                    .map(|j| job_line(&j.agent_id, &j.record))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        JobsCmd::Show { id, agent, conn } => {
            let j = conn.client()?.job(agent, id).await?;
            rep.result(&j, || job_detail(&j.agent_id, &j.record));
        }
        JobsCmd::RunNow { plan, agent, conn } => {
            let json = rep.is_json();
            let last = conn
                .client()?
                .run_now(agent, plan, |ev| {
                    if json {
                        if let Ok(s) = serde_json::to_string(ev) {
                            println!("{s}");
                        }
                        return;
                    }
                    match ev {
                        ProgressEvent::Started { job_id, .. } => {
                            eprintln!("job {job_id} started")
                        }
                        ProgressEvent::Progress {
                            vm, total, done, ..
                        } => eprintln!("  {vm}: {} of {}", human_bytes(*done), human_bytes(*total)),
                        ProgressEvent::VmDone(v) => eprintln!(
                            "  {}: {}",
                            v.vm,
                            if v.ok {
                                format!("ok, {}", v.point.as_deref().unwrap_or("-"))
                            } else {
                                format!("FAILED: {}", v.error.as_deref().unwrap_or("?"))
                            }
                        ),
                        ProgressEvent::Done(r) => println!("{}", job_detail(agent, r)),
                    }
                })
                .await?;
            match last {
                Some(ProgressEvent::Done(r)) => {
                    if r.state != ferry_api::v1::JobState::Succeeded {
                        return Ok(ExitCode::from(1));
                    }
                }
                _ => bail!("the progress stream ended before the job did"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(a: &LogsArgs, rep: &Reporter) -> anyhow::Result<ExitCode> {
    let c = a.conn.client()?;
    if a.collect {
        c.collect(&a.agent).await?;
    }
    let v = c.logs(Some(&a.agent), a.after, a.limit).await?;
    rep.result(&v, || {
        v.iter()
            .map(|l| {
                format!(
                    "{:>6} {} {:<5} {}",
                    l.entry.seq,
                    when(l.entry.time_ms / 1000),
                    l.entry.level.to_uppercase(),
                    l.entry.message
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(ExitCode::SUCCESS)
}
