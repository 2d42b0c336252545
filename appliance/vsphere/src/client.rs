//! The session: HTTPS client, `RetrieveServiceContent`, login/logout, the session cookie,
//! re-login when the session expires, and the raw `invoke` every other module uses.
//!
//! The session cookie and the password never reach a log line or an error message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{FaultKind, Result, VsphereError};
use crate::soap::{self, el, MoRef};
use crate::tls::{self, PinState, Trust};
use crate::xml::{self, Node};

/// A password that does not print.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for the wire only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// User name and password.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// User name (`administrator@vsphere.local`).
    pub user: String,
    /// Password.
    pub password: Secret,
}

impl Credentials {
    /// From values.
    pub fn new(user: &str, password: &str) -> Self {
        Credentials {
            user: user.to_string(),
            password: Secret::new(password),
        }
    }

    /// From a file: the user name on the first line, the password on the second.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| VsphereError::Io {
            what: format!("reading credentials from {}", path.display()),
            error: e,
        })?;
        let mut lines = text.lines();
        match (lines.next(), lines.next()) {
            (Some(u), Some(p)) if !u.trim().is_empty() && !p.is_empty() => {
                Ok(Credentials::new(u.trim(), p))
            }
            _ => Err(VsphereError::Invalid(format!(
                "{}: expected the user name on line 1 and the password on line 2",
                path.display()
            ))),
        }
    }

    /// From environment variables holding the user name and the password.
    pub fn from_env(user_var: &str, password_var: &str) -> Result<Self> {
        let get = |v: &str| {
            std::env::var(v)
                .ok()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    VsphereError::Invalid(format!("environment variable {v} is not set"))
                })
        };
        Ok(Credentials::new(&get(user_var)?, &get(password_var)?))
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `https://host[:port][/sdk]`, or just a host name.
    pub url: String,
    /// Who to log in as.
    pub credentials: Credentials,
    /// How the server's certificate is trusted.
    pub trust: Trust,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    /// Largest SOAP response accepted.
    pub max_response: usize,
}

impl ConnectOptions {
    /// Defaults: 120 s per request, 64 MiB responses.
    pub fn new(url: &str, credentials: Credentials, trust: Trust) -> Self {
        ConnectOptions {
            url: url.to_string(),
            credentials,
            trust,
            request_timeout: Duration::from_secs(120),
            max_response: 64 << 20,
        }
    }
}

/// The parts of `ServiceContent` Ferry uses.
#[derive(Debug, Clone)]
pub struct ServiceContent {
    /// Root folder.
    pub root_folder: MoRef,
    /// Property collector.
    pub property_collector: MoRef,
    /// View manager.
    pub view_manager: Option<MoRef>,
    /// Search index.
    pub search_index: Option<MoRef>,
    /// File manager (datastore directories and deletes).
    pub file_manager: Option<MoRef>,
    /// Session manager.
    pub session_manager: MoRef,
    /// `about.apiVersion`.
    pub api_version: String,
    /// `about.apiType` (`VirtualCenter` or `HostAgent`).
    pub api_type: String,
    /// `about.fullName`.
    pub full_name: String,
}

impl ServiceContent {
    fn from_node(n: &Node) -> Result<Self> {
        let r = n
            .child("returnval")
            .ok_or_else(|| shape("RetrieveServiceContent", "no returnval"))?;
        let m = |name: &str| r.child(name).and_then(MoRef::from_node);
        Ok(ServiceContent {
            root_folder: m("rootFolder").ok_or_else(|| shape("ServiceContent", "no rootFolder"))?,
            property_collector: m("propertyCollector")
                .ok_or_else(|| shape("ServiceContent", "no propertyCollector"))?,
            view_manager: m("viewManager"),
            search_index: m("searchIndex"),
            file_manager: m("fileManager"),
            session_manager: m("sessionManager")
                .ok_or_else(|| shape("ServiceContent", "no sessionManager"))?,
            api_version: r
                .text_at(&["about", "apiVersion"])
                .unwrap_or("6.5")
                .to_string(),
            api_type: r.text_at(&["about", "apiType"]).unwrap_or("").to_string(),
            full_name: r.text_at(&["about", "fullName"]).unwrap_or("").to_string(),
        })
    }
}

pub(crate) fn shape(what: &str, why: &str) -> VsphereError {
    VsphereError::Xml {
        what: what.to_string(),
        error: xml::XmlError::Shape(why.to_string()),
    }
}

struct Inner {
    http: reqwest::Client,
    sdk: url::Url,
    host: String,
    creds: Credentials,
    /// `vmware_soap_session=...`, secret.
    cookie: Mutex<Option<String>>,
    /// Bumped on every login, so concurrent callers that saw the same expiry log in once.
    generation: AtomicU64,
    login_lock: tokio::sync::Mutex<()>,
    sc: ServiceContent,
    pin: Option<Arc<Mutex<PinState>>>,
    max_response: usize,
    logins: AtomicU64,
}

/// A logged-in vSphere session. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("sdk", &self.inner.sdk.as_str())
            .field("user", &self.inner.creds.user)
            .finish()
    }
}

fn sdk_url(s: &str) -> Result<url::Url> {
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("https://{s}")
    };
    let mut u = url::Url::parse(&with_scheme)
        .map_err(|e| VsphereError::Invalid(format!("{s:?} is not a URL: {e}")))?;
    if u.scheme() != "https" {
        return Err(VsphereError::Invalid(format!(
            "{s:?}: only https is supported"
        )));
    }
    if u.path().is_empty() || u.path() == "/" {
        u.set_path("/sdk");
    }
    u.set_query(None);
    Ok(u)
}

impl Client {
    /// Connects, reads the service content and logs in.
    pub async fn connect(opts: &ConnectOptions) -> Result<Client> {
        let sdk = sdk_url(&opts.url)?;
        let host = sdk.host_str().unwrap_or_default().to_string();
        let (tls_cfg, pin) = tls::client_config(&opts.trust)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_cfg)
            .timeout(opts.request_timeout)
            .connect_timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(32)
            .build()
            .map_err(|e| VsphereError::Tls(e.to_string()))?;
        let placeholder = ServiceContent {
            root_folder: MoRef::new("Folder", "group-d1"),
            property_collector: MoRef::new("PropertyCollector", "propertyCollector"),
            view_manager: None,
            search_index: None,
            file_manager: None,
            session_manager: MoRef::new("SessionManager", "SessionManager"),
            api_version: "6.5".into(),
            api_type: String::new(),
            full_name: String::new(),
        };
        let mut inner = Inner {
            http,
            sdk,
            host,
            creds: opts.credentials.clone(),
            cookie: Mutex::new(None),
            generation: AtomicU64::new(0),
            login_lock: tokio::sync::Mutex::new(()),
            sc: placeholder,
            pin,
            max_response: opts.max_response,
            logins: AtomicU64::new(0),
        };
        let params = MoRef::new("ServiceInstance", "ServiceInstance").xml("_this");
        let resp = raw_call(&inner, "RetrieveServiceContent", &params).await?;
        inner.sc = ServiceContent::from_node(&resp)?;
        let client = Client {
            inner: Arc::new(inner),
        };
        client.login().await?;
        tracing::info!(
            server = %client.inner.sdk,
            product = %client.inner.sc.full_name,
            user = %client.inner.creds.user,
            "connected to vSphere"
        );
        Ok(client)
    }

    /// The service content.
    pub fn service_content(&self) -> &ServiceContent {
        &self.inner.sc
    }

    /// The SDK URL.
    pub fn url(&self) -> &url::Url {
        &self.inner.sdk
    }

    /// The pinned certificate thumbprint (learnt one under trust on first use).
    pub fn pinned_thumbprint(&self) -> Option<String> {
        self.inner.pin.as_ref().and_then(|p| tls::pinned(p))
    }

    /// How many logins this client did (the first one included).
    pub fn login_count(&self) -> u64 {
        self.inner.logins.load(Ordering::Relaxed)
    }

    pub(crate) fn credentials(&self) -> &Credentials {
        &self.inner.creds
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// The session cookie header value and its login generation.
    pub(crate) fn cookie(&self) -> (Option<String>, u64) {
        let gen = self.inner.generation.load(Ordering::SeqCst);
        let c = self
            .inner
            .cookie
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (c, gen)
    }

    pub(crate) fn map_http_error(&self, what: &str, e: reqwest::Error) -> VsphereError {
        map_http(&self.inner, what, e)
    }

    /// Logs in with the stored credentials (and replaces the session cookie).
    pub async fn login(&self) -> Result<()> {
        let c = &self.inner.creds;
        let params = format!(
            "{}{}{}",
            self.inner.sc.session_manager.xml("_this"),
            el("userName", &c.user),
            el("password", c.password.expose())
        );
        *self.inner.cookie.lock().unwrap_or_else(|e| e.into_inner()) = None;
        raw_call(&self.inner, "Login", &params).await?;
        if self.cookie().0.is_none() {
            return Err(shape("Login", "no session cookie in the response"));
        }
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        self.inner.logins.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Logs in again unless another caller already did since `seen_generation`.
    pub(crate) async fn relogin(&self, seen_generation: u64) -> Result<()> {
        let _g = self.inner.login_lock.lock().await;
        if self.inner.generation.load(Ordering::SeqCst) != seen_generation {
            return Ok(());
        }
        tracing::warn!(server = %self.inner.sdk, "vSphere session expired; logging in again");
        self.login().await
    }

    /// Logs out (best effort on a dead session).
    pub async fn logout(&self) -> Result<()> {
        let params = self.inner.sc.session_manager.xml("_this");
        raw_call(&self.inner, "Logout", &params).await.map(|_| ())
    }

    /// Calls `method`; a `NotAuthenticated` fault triggers one re-login and a retry.
    pub async fn invoke(&self, method: &str, params: &str) -> Result<Node> {
        let gen = self.cookie().1;
        match raw_call(&self.inner, method, params).await {
            Err(e) if e.is_not_authenticated() => {
                self.relogin(gen).await?;
                raw_call(&self.inner, method, params).await
            }
            r => r,
        }
    }

    /// `CurrentTime`: the server's clock, and a cheap liveness probe.
    pub async fn current_time(&self) -> Result<String> {
        let r = self
            .invoke(
                "CurrentTime",
                &MoRef::new("ServiceInstance", "ServiceInstance").xml("_this"),
            )
            .await?;
        Ok(r.text_at(&["returnval"]).unwrap_or("").to_string())
    }

    /// `SessionIsActive` for our own session is not allowed everywhere; a `CurrentTime`
    /// call without re-login tells whether the session is still alive.
    pub async fn session_alive(&self) -> Result<bool> {
        let params = MoRef::new("ServiceInstance", "ServiceInstance").xml("_this");
        match raw_call(&self.inner, "CurrentTime", &params).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_authenticated() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Keeps the session alive (or logs in again).
    pub async fn keep_alive(&self) -> Result<()> {
        self.current_time().await.map(|_| ())
    }
}

fn map_http(inner: &Inner, what: &str, e: reqwest::Error) -> VsphereError {
    if let Some(p) = &inner.pin {
        if let Some((expected, got)) = tls::take_mismatch(p) {
            return VsphereError::ThumbprintMismatch {
                host: inner.host.clone(),
                expected,
                got,
            };
        }
    }
    VsphereError::Http {
        what: what.to_string(),
        error: e.without_url(),
    }
}

/// Reads a response body up to `limit` bytes.
pub(crate) async fn read_bounded(
    mut resp: reqwest::Response,
    limit: usize,
    what: &str,
) -> std::result::Result<Vec<u8>, Option<reqwest::Error>> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Some)? {
        if out.len() + chunk.len() > limit {
            tracing::warn!(what, limit, "response too large");
            return Err(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn raw_call(inner: &Inner, method: &str, params: &str) -> Result<Node> {
    let body = soap::envelope(method, params);
    let action = format!("urn:vim25/{}", inner.sc.api_version);
    let mut req = inner
        .http
        .post(inner.sdk.clone())
        .header("Content-Type", "text/xml; charset=utf-8")
        .header("SOAPAction", action)
        .body(body);
    let cookie = inner
        .cookie
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    let resp = req.send().await.map_err(|e| map_http(inner, method, e))?;
    let status = resp.status();
    if method == "Login" {
        for v in resp.headers().get_all("set-cookie") {
            if let Ok(s) = v.to_str() {
                if let Some(rest) = s.strip_prefix("vmware_soap_session=") {
                    let val = rest.split(';').next().unwrap_or("");
                    *inner.cookie.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("vmware_soap_session={val}"));
                }
            }
        }
    }
    let data = match read_bounded(resp, inner.max_response, method).await {
        Ok(d) => d,
        Err(Some(e)) => return Err(map_http(inner, method, e)),
        Err(None) => {
            return Err(VsphereError::TooLarge {
                what: method.to_string(),
                limit: inner.max_response,
            })
        }
    };
    let doc = match xml::parse(&data) {
        Ok(d) => d,
        Err(_) if !status.is_success() => {
            return Err(VsphereError::Status {
                what: method.to_string(),
                status: status.as_u16(),
            })
        }
        Err(e) => {
            return Err(VsphereError::Xml {
                what: method.to_string(),
                error: e,
            })
        }
    };
    let r = soap::decode_response(method, &doc);
    if let Err(VsphereError::Fault {
        kind: FaultKind::InvalidLogin,
        ..
    }) = &r
    {
        tracing::warn!(user = %inner.creds.user, "vSphere refused the login");
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_urls() {
        assert_eq!(
            sdk_url("vc.example").unwrap().as_str(),
            "https://vc.example/sdk"
        );
        assert_eq!(
            sdk_url("https://h:8443/sdk?x=1").unwrap().as_str(),
            "https://h:8443/sdk"
        );
        assert!(sdk_url("http://h").is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Credentials::new("u", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn credentials_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c");
        std::fs::write(&p, "admin\npa ss\n").unwrap();
        let c = Credentials::from_file(&p).unwrap();
        assert_eq!((c.user.as_str(), c.password.expose()), ("admin", "pa ss"));
        std::fs::write(&p, "admin\n").unwrap();
        assert!(Credentials::from_file(&p).is_err());
    }
}
