//! Shared helpers: a management server on loopback, agent processes, raw TLS clients.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ferry_mgmt::client::{AdminBundle, AdminClient};
use ferry_tls::trust::{client_config, Identity, ServerTrust};
use tokio::io::{AsyncBufReadExt, BufReader};

pub struct Mgmt {
    pub state: PathBuf,
    pub port: u16,
    pub task: tokio::task::JoinHandle<()>,
    pub admin: AdminClient,
    pub bundle: AdminBundle,
    pub ca_sha256: String,
}

impl Mgmt {
    pub async fn start(state: &Path, port: u16, license: bool) -> Mgmt {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let m = ferry_mgmt::Mgmt::open(ferry_mgmt::Options {
            state_dir: state.to_path_buf(),
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            public_url: Some(format!("https://127.0.0.1:{port}")),
            collect_every: Duration::from_secs(3600),
            license: license.then(|| ferry_mgmt::LicenseService {
                licensee: "Test".into(),
                hosts: 2,
                sockets: 4,
                days: 30,
            }),
        })
        .unwrap();
        let ca_sha256 = m.ca.sha256().to_string();
        let task = tokio::spawn(async move {
            ferry_mgmt::serve_on(m, listener).await.unwrap();
        });
        let bundle = AdminBundle::load(&state.join("admin.pem")).unwrap();
        let admin = AdminClient::new(&format!("127.0.0.1:{port}"), &bundle).unwrap();
        Mgmt {
            state: state.to_path_buf(),
            port,
            task,
            admin,
            bundle,
            ca_sha256,
        }
    }

    pub async fn stop(self) -> (PathBuf, u16) {
        self.task.abort();
        let _ = self.task.await;
        (self.state, self.port)
    }

    pub async fn token(&self, ttl: u64) -> String {
        self.admin
            .create_token(Duration::from_secs(ttl), None)
            .await
            .unwrap()
            .token
    }

    /// A raw client with the admin certificate for an agent.
    pub fn agent_http(&self, agent_id: &str) -> reqwest::Client {
        ferry_tls::http_client(
            client_config(
                ServerTrust::Ca {
                    ca_pem: self.bundle.ca_pem.clone(),
                    name: ferry_api::agent_server_name(agent_id),
                },
                Some(Identity::from_pem(&self.bundle.cert_pem, &self.bundle.key_pem).unwrap()),
            )
            .unwrap(),
        )
        .unwrap()
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Agent {
    pub child: tokio::process::Child,
    pub state: PathBuf,
    pub port: u16,
    pub env: Vec<(String, String)>,
    pub stderr: Arc<std::sync::Mutex<String>>,
}

impl Agent {
    pub async fn start(state: &Path, port: u16, env: &[(&str, &str)]) -> Agent {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::spawn(state, port, env).await
    }

    async fn spawn(state: &Path, port: u16, env: Vec<(String, String)>) -> Agent {
        let run = state.join("run");
        std::fs::create_dir_all(&run).unwrap();
        // The console device: a file the agent may only append to (it never creates it).
        let console = Self::console_path(state);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&console)
            .unwrap();
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-agent"));
        c.env_clear()
            .env("FERRY_STATE_DIR", state)
            .env("FERRY_RUN_DIR", &run)
            .env("FERRY_LISTEN", format!("0.0.0.0:{port}"))
            .env("FERRY_LOG", "info")
            .env("FERRY_ADDR_POLL", "0.5")
            .env("FERRY_CONSOLE", &console)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = c.spawn().unwrap();
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let stderr = stderr.clone();
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            // As init does in the appliance: the agent's stderr goes into the log ring that
            // `GET /v1/logs` serves.
            let mut ring = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(run.join("log"))
                .unwrap();
            tokio::spawn(async move {
                let mut tx = Some(tx);
                while let Ok(Some(l)) = lines.next_line().await {
                    if l.contains("agent ready") {
                        if let Some(t) = tx.take() {
                            let _ = t.send(());
                        }
                    }
                    eprintln!("[agent {port}] {l}");
                    let _ = std::io::Write::write_all(&mut ring, format!("{l}\n").as_bytes());
                    let mut s = stderr.lock().unwrap();
                    s.push_str(&l);
                    s.push('\n');
                }
            });
        }
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("agent ready")
            .unwrap();
        Agent {
            child,
            state: state.to_path_buf(),
            port,
            env,
            stderr,
        }
    }

    /// Kills the agent (as a power cut would) and starts it again on the same state.
    pub async fn reboot(mut self) -> Agent {
        self.child.kill().await.unwrap();
        let _ = self.child.wait().await;
        Self::spawn(&self.state, self.port, self.env.clone()).await
    }

    pub async fn kill(mut self) -> Agent {
        self.child.kill().await.unwrap();
        let _ = self.child.wait().await;
        self
    }

    pub async fn restart(self) -> Agent {
        Self::spawn(&self.state, self.port, self.env.clone()).await
    }

    /// The file given to the agent as its console device (`FERRY_CONSOLE`), next to (not
    /// in) its state directory.
    pub fn console_path(state: &Path) -> PathBuf {
        PathBuf::from(format!("{}.console", state.display()))
    }

    /// What the agent wrote on its console.
    pub fn console(&self) -> String {
        std::fs::read_to_string(Self::console_path(&self.state)).unwrap_or_default()
    }

    /// The pairing code shown last on the console.
    pub fn pairing_code(&self) -> Option<String> {
        self.console()
            .lines()
            .rev()
            .find_map(|l| l.split("PAIRING CODE ").nth(1))
            .map(|r| r.split_whitespace().next().unwrap_or_default().to_string())
    }

    /// Status with no client certificate (works before registration only).
    pub async fn status_anonymous(&self) -> reqwest::Result<serde_json::Value> {
        let c = ferry_tls::http_client(client_config(ServerTrust::Any, None).unwrap()).unwrap();
        c.get(format!("https://127.0.0.1:{}/v1/status", self.port))
            .send()
            .await?
            .json()
            .await
    }
}

/// Polls `f` until it gives `Some`, up to `secs`.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
