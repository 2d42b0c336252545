//! SQLite state: tokens, agents (and every certificate issued to each), admins, plans,
//! collected jobs and logs.
//!
//! One connection behind a mutex (WAL, `synchronous=NORMAL`); every statement is short.
//! The file is created 0600. Plan bodies (plan and credentials) are sealed with the key
//! in `secrets.key` ([`crate::secrets`]); rows written in clear by an older version are
//! sealed at open, and the file is vacuumed so the clear text does not linger in free
//! pages (`secure_delete` is on for the same reason).

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use ferry_api::v1::{
    AgentHello, AgentInfo, AgentState, CollectedJob, CollectedLog, JobRecord, PeerRole,
};
use rusqlite::{params, Connection, OptionalExtension};

use crate::secrets::{Sealer, SEALED_PREFIX};
use crate::wire::AdminInfo;
use crate::MgmtError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, secret_sha256 TEXT NOT NULL, created INTEGER NOT NULL,
    expires INTEGER NOT NULL, used INTEGER, used_by TEXT, note TEXT);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY, hostname TEXT NOT NULL, address TEXT NOT NULL, addresses TEXT NOT NULL,
    version TEXT NOT NULL, cert_sha256 TEXT NOT NULL UNIQUE, state TEXT NOT NULL,
    registered INTEGER NOT NULL, last_seen INTEGER,
    job_cursor INTEGER NOT NULL DEFAULT 0, log_cursor INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS admins (
    name TEXT PRIMARY KEY, cert_sha256 TEXT NOT NULL UNIQUE, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS plans (
    agent_id TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, updated INTEGER NOT NULL,
    pushed INTEGER, PRIMARY KEY (agent_id, name));
CREATE TABLE IF NOT EXISTS jobs (
    agent_id TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, started INTEGER NOT NULL,
    record TEXT NOT NULL, PRIMARY KEY (agent_id, seq));
CREATE TABLE IF NOT EXISTS revoked (
    sha256 TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL, revoked INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS agent_certs (
    sha256 TEXT PRIMARY KEY, agent_id TEXT NOT NULL, issued INTEGER NOT NULL,
    renewal INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS logs (
    agent_id TEXT NOT NULL, seq INTEGER NOT NULL, time_ms INTEGER NOT NULL, level TEXT NOT NULL,
    message TEXT NOT NULL, PRIMARY KEY (agent_id, seq));
";

fn sql(e: rusqlite::Error) -> MgmtError {
    MgmtError::Db(e.to_string())
}

/// A stored plan: (name, push JSON, updated, pushed).
pub type PlanRow = (String, String, i64, Option<i64>);

/// The database.
#[derive(Debug)]
pub struct Db {
    conn: Mutex<Connection>,
    sealer: Sealer,
}

fn plan_aad(agent: &str, name: &str) -> String {
    format!("plan {name:?} of agent {agent}")
}

/// What redeeming a token found.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenCheck {
    /// Valid and now spent.
    Ok,
    /// No such token, or a wrong secret.
    Unknown,
    /// Already used.
    Spent,
    /// Past its expiry.
    Expired,
}

impl Db {
    /// Opens (creating 0600) and migrates; `key` is the key file for plan credentials,
    /// created when missing unless the database already holds sealed rows.
    pub fn open(path: &Path, key: &Path) -> Result<Db, MgmtError> {
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| MgmtError::Io(format!("create {}: {e}", path.display())))?;
        }
        let c = Connection::open(path).map_err(sql)?;
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;
             PRAGMA secure_delete=ON;",
        )
        .map_err(sql)?;
        c.execute_batch(SCHEMA).map_err(sql)?;
        // Registries from before storage nodes: every peer was an agent.
        let has_role = c
            .prepare("SELECT 1 FROM pragma_table_info('agents') WHERE name = 'role'")
            .and_then(|mut st| st.exists([]))
            .map_err(sql)?;
        if !has_role {
            c.execute_batch("ALTER TABLE agents ADD COLUMN role TEXT NOT NULL DEFAULT 'agent'")
                .map_err(sql)?;
        }
        // Agents revoked before the revocation table existed.
        c.execute(
            "INSERT OR IGNORE INTO revoked (sha256, role, name, revoked)
             SELECT cert_sha256, 'agent', id, COALESCE(last_seen, registered) FROM agents
             WHERE state = 'revoked'",
            [],
        )
        .map_err(sql)?;
        let sealed: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM plans WHERE body LIKE 'sealed:%'",
                [],
                |r| r.get(0),
            )
            .map_err(sql)?;
        let db = Db {
            sealer: Sealer::load(key, sealed == 0)?,
            conn: Mutex::new(c),
        };
        db.seal_clear_rows()?;
        Ok(db)
    }

    /// Seals rows an older version stored in clear, and checks that every sealed row
    /// opens with the key, so a wrong key file fails at start and not at the next push.
    fn seal_clear_rows(&self) -> Result<(), MgmtError> {
        let c = self.c();
        let rows: Vec<(String, String, String)> = c
            .prepare("SELECT agent_id, name, body FROM plans")
            .map_err(sql)?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        let mut migrated = 0;
        for (agent, name, body) in rows {
            let aad = plan_aad(&agent, &name);
            if body.starts_with(SEALED_PREFIX) {
                self.sealer.open(&aad, &body)?;
                continue;
            }
            let sealed = self.sealer.seal(&aad, &body)?;
            c.execute(
                "UPDATE plans SET body=?3 WHERE agent_id=?1 AND name=?2",
                params![agent, name, sealed],
            )
            .map_err(sql)?;
            migrated += 1;
        }
        if migrated > 0 {
            c.execute_batch(
                "PRAGMA wal_checkpoint(TRUNCATE); VACUUM; PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .map_err(sql)?;
            tracing::info!("encrypted the credentials of {migrated} plans stored in clear");
        }
        Ok(())
    }

    fn c(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a token (its secret only as a hash).
    pub fn add_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now: i64,
        expires: i64,
        note: Option<&str>,
    ) -> Result<(), MgmtError> {
        self.c()
            .execute(
                "INSERT INTO tokens (id, secret_sha256, created, expires, note) VALUES (?1,?2,?3,?4,?5)",
                params![id, secret_sha256, now, expires, note],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// Spends a token atomically.
    pub fn redeem_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now: i64,
        by: &str,
    ) -> Result<TokenCheck, MgmtError> {
        let c = self.c();
        let row: Option<(String, i64, Option<i64>)> = c
            .query_row(
                "SELECT secret_sha256, expires, used FROM tokens WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(sql)?;
        let Some((hash, expires, used)) = row else {
            return Ok(TokenCheck::Unknown);
        };
        if !crate::ct_eq(hash.as_bytes(), secret_sha256.as_bytes()) {
            return Ok(TokenCheck::Unknown);
        }
        if used.is_some() {
            return Ok(TokenCheck::Spent);
        }
        if expires <= now {
            return Ok(TokenCheck::Expired);
        }
        let n = c
            .execute(
                "UPDATE tokens SET used = ?2, used_by = ?3 WHERE id = ?1 AND used IS NULL",
                params![id, now, by],
            )
            .map_err(sql)?;
        Ok(if n == 1 {
            TokenCheck::Ok
        } else {
            TokenCheck::Spent
        })
    }

    /// Registers an agent.
    pub fn add_agent(&self, a: &AgentInfo) -> Result<(), MgmtError> {
        let mut c = self.c();
        let tx = c.transaction().map_err(sql)?;
        tx.execute(
            "INSERT OR IGNORE INTO agent_certs (sha256, agent_id, issued) VALUES (?1,?2,?3)",
            params![a.cert_sha256, a.id, a.registered_unix],
        )
        .map_err(sql)?;
        tx.execute(
                "INSERT INTO agents (id, hostname, address, addresses, version, cert_sha256, state, registered, last_seen, role)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)",
                params![
                    a.id,
                    a.hostname,
                    a.address,
                    serde_json::to_string(&a.addresses).unwrap_or_default(),
                    a.version,
                    a.cert_sha256,
                    a.state.as_str(),
                    a.registered_unix,
                    a.last_seen_unix,
                    a.role.as_str()
                ],
            )
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(())
    }

    /// Records a renewed certificate of agent `id`: it becomes the current one; the
    /// earlier ones stay valid until they expire (the agent may not have installed the new
    /// one yet), and all are revoked together when the agent is.
    pub fn add_renewed_cert(&self, id: &str, sha256: &str, now: i64) -> Result<(), MgmtError> {
        let mut c = self.c();
        let tx = c.transaction().map_err(sql)?;
        tx.execute(
            "INSERT OR IGNORE INTO agent_certs (sha256, agent_id, issued, renewal) VALUES (?1,?2,?3,1)",
            params![sha256, id, now],
        )
        .map_err(sql)?;
        tx.execute(
            "UPDATE agents SET cert_sha256 = ?2 WHERE id = ?1",
            params![id, sha256],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(())
    }

    /// When agent `id` last renewed its certificate.
    pub fn last_renewal(&self, id: &str) -> Result<Option<i64>, MgmtError> {
        self.c()
            .query_row(
                "SELECT MAX(issued) FROM agent_certs WHERE agent_id = ?1 AND renewal = 1",
                params![id],
                |r| r.get(0),
            )
            .map_err(sql)
    }

    /// Every certificate fingerprint ever issued to agent `id` (the current one first).
    pub fn agent_cert_shas(&self, id: &str) -> Result<Vec<String>, MgmtError> {
        let c = self.c();
        let mut st = c
            .prepare(
                "SELECT cert_sha256 FROM agents WHERE id = ?1
                 UNION SELECT sha256 FROM agent_certs WHERE agent_id = ?1",
            )
            .map_err(sql)?;
        let mut v = st
            .query_map(params![id], |r| r.get::<_, String>(0))
            .map_err(sql)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql)?;
        let current: Option<String> = c
            .query_row(
                "SELECT cert_sha256 FROM agents WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)?;
        if let Some(cur) = current {
            v.sort_by_key(|s| *s != cur);
        }
        Ok(v)
    }

    fn agent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentInfo> {
        let addresses: String = r.get(3)?;
        let state: String = r.get(6)?;
        Ok(AgentInfo {
            id: r.get(0)?,
            hostname: r.get(1)?,
            address: r.get(2)?,
            addresses: serde_json::from_str(&addresses).unwrap_or_default(),
            version: r.get(4)?,
            cert_sha256: r.get(5)?,
            state: if state == "revoked" {
                AgentState::Revoked
            } else {
                AgentState::Active
            },
            registered_unix: r.get(7)?,
            last_seen_unix: r.get(8)?,
            role: if r.get::<_, String>(9)? == "node" {
                PeerRole::Node
            } else {
                PeerRole::Agent
            },
        })
    }

    const AGENT_COLS: &'static str =
        "id, hostname, address, addresses, version, cert_sha256, state, registered, last_seen, role";

    /// Every agent, by registration time.
    pub fn agents(&self) -> Result<Vec<AgentInfo>, MgmtError> {
        let c = self.c();
        let mut st = c
            .prepare(&format!(
                "SELECT {} FROM agents ORDER BY registered, id",
                Self::AGENT_COLS
            ))
            .map_err(sql)?;
        let rows = st
            .query_map([], Self::agent_row)
            .map_err(sql)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql)?;
        Ok(rows)
    }

    /// One agent by id.
    pub fn agent(&self, id: &str) -> Result<Option<AgentInfo>, MgmtError> {
        self.c()
            .query_row(
                &format!("SELECT {} FROM agents WHERE id = ?1", Self::AGENT_COLS),
                params![id],
                Self::agent_row,
            )
            .optional()
            .map_err(sql)
    }

    /// One agent by certificate fingerprint: its current certificate or an earlier one
    /// (renewal keeps those valid until they expire).
    pub fn agent_by_cert(&self, sha256: &str) -> Result<Option<AgentInfo>, MgmtError> {
        self.c()
            .query_row(
                &format!(
                    "SELECT {} FROM agents WHERE cert_sha256 = ?1
                     OR id = (SELECT agent_id FROM agent_certs WHERE sha256 = ?1)",
                    Self::AGENT_COLS
                ),
                params![sha256],
                Self::agent_row,
            )
            .optional()
            .map_err(sql)
    }

    /// Sets the state.
    pub fn set_agent_state(&self, id: &str, s: AgentState) -> Result<bool, MgmtError> {
        let n = self
            .c()
            .execute(
                "UPDATE agents SET state = ?2 WHERE id = ?1",
                params![id, s.as_str()],
            )
            .map_err(sql)?;
        Ok(n == 1)
    }

    /// Records a hello: address, hostname, version, last seen.
    pub fn agent_hello(
        &self,
        id: &str,
        h: &AgentHello,
        address: &str,
        now: i64,
    ) -> Result<(), MgmtError> {
        self.c()
            .execute(
                "UPDATE agents SET hostname=?2, version=?3, addresses=?4, address=?5, last_seen=?6 WHERE id=?1",
                params![
                    id,
                    h.hostname,
                    h.version,
                    serde_json::to_string(&h.addresses).unwrap_or_default(),
                    address,
                    now
                ],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// Marks contact.
    pub fn touch_agent(&self, id: &str, now: i64) -> Result<(), MgmtError> {
        self.c()
            .execute(
                "UPDATE agents SET last_seen=?2 WHERE id=?1",
                params![id, now],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// Registers the first admin's certificate (replacing a lost one's).
    pub fn add_admin(&self, name: &str, sha256: &str, now: i64) -> Result<(), MgmtError> {
        self.c()
            .execute(
                "INSERT OR REPLACE INTO admins (name, cert_sha256, created) VALUES (?1,?2,?3)",
                params![name, sha256, now],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// Registers a new admin; a name is never reused, even after revocation.
    pub fn create_admin(&self, name: &str, sha256: &str, now: i64) -> Result<(), MgmtError> {
        let n = self
            .c()
            .execute(
                "INSERT OR IGNORE INTO admins (name, cert_sha256, created) VALUES (?1,?2,?3)",
                params![name, sha256, now],
            )
            .map_err(sql)?;
        if n == 0 {
            return Err(MgmtError::Invalid(format!(
                "admin {name:?} exists already (names are not reused, even after revocation)"
            )));
        }
        Ok(())
    }

    /// The admin with this certificate, unless it is revoked.
    pub fn admin_by_cert(&self, sha256: &str) -> Result<Option<String>, MgmtError> {
        self.c()
            .query_row(
                "SELECT name FROM admins WHERE cert_sha256 = ?1
                 AND cert_sha256 NOT IN (SELECT sha256 FROM revoked)",
                params![sha256],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)
    }

    /// Every admin, by creation time.
    pub fn admins(&self) -> Result<Vec<AdminInfo>, MgmtError> {
        let c = self.c();
        let mut st = c
            .prepare(
                "SELECT a.name, a.cert_sha256, a.created, r.revoked FROM admins a
                 LEFT JOIN revoked r ON r.sha256 = a.cert_sha256 ORDER BY a.created, a.name",
            )
            .map_err(sql)?;
        let rows = st
            .query_map([], |r| {
                Ok(AdminInfo {
                    name: r.get(0)?,
                    cert_sha256: r.get(1)?,
                    created_unix: r.get(2)?,
                    revoked_unix: r.get(3)?,
                })
            })
            .map_err(sql)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql)?;
        Ok(rows)
    }

    /// Puts a certificate on the revocation list (once).
    pub fn revoke_cert(
        &self,
        sha256: &str,
        role: &str,
        name: &str,
        now: i64,
    ) -> Result<(), MgmtError> {
        self.c()
            .execute(
                "INSERT OR IGNORE INTO revoked (sha256, role, name, revoked) VALUES (?1,?2,?3,?4)",
                params![sha256, role, name, now],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// The revocation list, oldest first.
    pub fn revoked(&self) -> Result<Vec<ferry_tls::revocation::Revoked>, MgmtError> {
        let c = self.c();
        let mut st = c
            .prepare("SELECT sha256, role, name, revoked FROM revoked ORDER BY revoked, sha256")
            .map_err(sql)?;
        let rows = st
            .query_map([], |r| {
                Ok(ferry_tls::revocation::Revoked {
                    sha256: r.get(0)?,
                    role: r.get(1)?,
                    name: r.get(2)?,
                    revoked_unix: r.get(3)?,
                })
            })
            .map_err(sql)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql)?;
        Ok(rows)
    }

    /// Stores a plan push (plan and credentials, JSON), sealed.
    pub fn put_plan(&self, agent: &str, name: &str, body: &str, now: i64) -> Result<(), MgmtError> {
        let sealed = self.sealer.seal(&plan_aad(agent, name), body)?;
        self.c()
            .execute(
                "INSERT OR REPLACE INTO plans (agent_id, name, body, updated) VALUES (?1,?2,?3,?4)",
                params![agent, name, sealed, now],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// Marks a plan as pushed.
    pub fn plan_pushed(&self, agent: &str, name: &str, now: i64) -> Result<(), MgmtError> {
        self.c()
            .execute(
                "UPDATE plans SET pushed=?3 WHERE agent_id=?1 AND name=?2",
                params![agent, name, now],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// Plans of an agent: (name, body opened, updated, pushed).
    pub fn plans(&self, agent: &str) -> Result<Vec<PlanRow>, MgmtError> {
        let rows: Vec<PlanRow> = {
            let c = self.c();
            let mut st = c
                .prepare(
                    "SELECT name, body, updated, pushed FROM plans WHERE agent_id=?1 ORDER BY name",
                )
                .map_err(sql)?;
            let rows = st
                .query_map(params![agent], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(sql)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql)?;
            rows
        };
        rows.into_iter()
            .map(|(name, body, updated, pushed)| {
                let body = self.sealer.open(&plan_aad(agent, &name), &body)?;
                Ok((name, body, updated, pushed))
            })
            .collect()
    }

    /// Collection cursors (jobs, logs).
    pub fn cursors(&self, agent: &str) -> Result<(u64, u64), MgmtError> {
        let (j, l): (i64, i64) = self
            .c()
            .query_row(
                "SELECT job_cursor, log_cursor FROM agents WHERE id=?1",
                params![agent],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql)?;
        Ok((u64::try_from(j).unwrap_or(0), u64::try_from(l).unwrap_or(0)))
    }

    /// Stores collected job records and moves the cursor, in one transaction; returns how
    /// many were new.
    pub fn add_jobs(&self, agent: &str, recs: &[JobRecord], next: u64) -> Result<u64, MgmtError> {
        let mut c = self.c();
        let tx = c.transaction().map_err(sql)?;
        let mut n = 0;
        for r in recs {
            let body = serde_json::to_string(r).map_err(|e| MgmtError::Db(e.to_string()))?;
            n += tx
                .execute(
                    "INSERT OR IGNORE INTO jobs (agent_id, seq, id, started, record) VALUES (?1,?2,?3,?4,?5)",
                    params![agent, i64::try_from(r.seq).unwrap_or(i64::MAX), r.id, r.started_unix, body],
                )
                .map_err(sql)? as u64;
        }
        tx.execute(
            "UPDATE agents SET job_cursor = MAX(job_cursor, ?2) WHERE id=?1",
            params![agent, i64::try_from(next).unwrap_or(i64::MAX)],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(n)
    }

    /// Stores collected log lines and moves the cursor.
    pub fn add_logs(
        &self,
        agent: &str,
        entries: &[ferry_api::v1::LogEntry],
        next: u64,
    ) -> Result<u64, MgmtError> {
        let mut c = self.c();
        let tx = c.transaction().map_err(sql)?;
        let mut n = 0;
        for e in entries {
            n += tx
                .execute(
                    "INSERT OR IGNORE INTO logs (agent_id, seq, time_ms, level, message) VALUES (?1,?2,?3,?4,?5)",
                    params![agent, i64::try_from(e.seq).unwrap_or(i64::MAX), e.time_ms, e.level, e.message],
                )
                .map_err(sql)? as u64;
        }
        tx.execute(
            "UPDATE agents SET log_cursor = MAX(log_cursor, ?2) WHERE id=?1",
            params![agent, i64::try_from(next).unwrap_or(i64::MAX)],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(n)
    }

    /// Collected jobs, newest first.
    pub fn jobs(&self, agent: Option<&str>, limit: u32) -> Result<Vec<CollectedJob>, MgmtError> {
        let c = self.c();
        let mut st = c
            .prepare(
                "SELECT agent_id, record FROM jobs WHERE (?1 IS NULL OR agent_id = ?1)
                 ORDER BY started DESC, seq DESC LIMIT ?2",
            )
            .map_err(sql)?;
        let rows = st
            .query_map(params![agent, limit], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(sql)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql)?;
        Ok(rows
            .into_iter()
            .filter_map(|(a, b)| {
                serde_json::from_str(&b).ok().map(|record| CollectedJob {
                    agent_id: a,
                    record,
                })
            })
            .collect())
    }

    /// One collected job by agent and job id.
    pub fn job(&self, agent: &str, id: &str) -> Result<Option<CollectedJob>, MgmtError> {
        let b: Option<String> = self
            .c()
            .query_row(
                "SELECT record FROM jobs WHERE agent_id=?1 AND id=?2",
                params![agent, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)?;
        Ok(b.and_then(|b| serde_json::from_str(&b).ok())
            .map(|record| CollectedJob {
                agent_id: agent.to_string(),
                record,
            }))
    }

    /// Collected log lines with `seq > after`, oldest first.
    pub fn logs(
        &self,
        agent: Option<&str>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<CollectedLog>, MgmtError> {
        let c = self.c();
        let mut st = c
            .prepare(
                "SELECT agent_id, seq, time_ms, level, message FROM logs
                 WHERE (?1 IS NULL OR agent_id = ?1) AND seq > ?2 ORDER BY agent_id, seq LIMIT ?3",
            )
            .map_err(sql)?;
        let rows = st
            .query_map(
                params![agent, i64::try_from(after).unwrap_or(i64::MAX), limit],
                |r| {
                    Ok(CollectedLog {
                        agent_id: r.get(0)?,
                        entry: ferry_api::v1::LogEntry {
                            seq: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                            time_ms: r.get(2)?,
                            level: r.get(3)?,
                            message: r.get(4)?,
                        },
                    })
                },
            )
            .map_err(sql)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql)?;
        Ok(rows)
    }
}
