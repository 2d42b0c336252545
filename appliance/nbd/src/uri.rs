//! NBD URIs, as libnbd and qemu write them.
//!
//! `nbd://host[:port]/[export]`, `nbds://…` (TLS required), `nbd+unix:///[export]?socket=PATH`
//! and `nbds+unix://…`. The query may also carry `tls-certificates=DIR` (a directory with
//! `ca-cert.pem` and optionally `client-cert.pem` and `client-key.pem`, as libnbd reads it).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::NbdError;

/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP host and port.
    Tcp {
        /// Host name or address (no brackets for IPv6).
        host: String,
        /// Port.
        port: u16,
    },
    /// A unix socket path.
    Unix(PathBuf),
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// Export name ("" is the default export).
    pub export: String,
    /// TLS is required (`nbds`).
    pub tls: bool,
    /// `tls-certificates=DIR` from the query.
    pub tls_certificates: Option<PathBuf>,
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                // Two hex digits exactly: `from_str_radix` alone would take "%+f".
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

impl NbdUri {
    /// Parses a URI.
    pub fn parse(s: &str) -> Result<Self, NbdError> {
        let bad = |why: String| NbdError::Uri {
            uri: s.to_string(),
            why,
        };
        let url = url::Url::parse(s).map_err(|e| bad(e.to_string()))?;
        let (tls, unix) = match url.scheme() {
            "nbd" => (false, false),
            "nbds" => (true, false),
            "nbd+unix" => (false, true),
            "nbds+unix" => (true, true),
            other => {
                return Err(bad(format!(
                    "unknown scheme {other:?} (nbd, nbds, nbd+unix, nbds+unix)"
                )))
            }
        };
        let export =
            percent_decode(url.path().strip_prefix('/').unwrap_or(url.path())).map_err(bad)?;
        let mut socket = None;
        let mut tls_certificates = None;
        for (k, v) in url.query_pairs() {
            match &*k {
                "socket" => socket = Some(PathBuf::from(v.into_owned())),
                "tls-certificates" => tls_certificates = Some(PathBuf::from(v.into_owned())),
                // libnbd knows more keys (tls-psk-file, tls-username); refuse rather than ignore them.
                other => return Err(bad(format!("unsupported query parameter {other:?}"))),
            }
        }
        let endpoint = if unix {
            if url.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(bad("a unix URI has no host".into()));
            }
            Endpoint::Unix(socket.ok_or_else(|| bad("missing ?socket=PATH".into()))?)
        } else {
            if socket.is_some() {
                return Err(bad("socket= is only for nbd+unix".into()));
            }
            let host = match url.host() {
                Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
                Some(url::Host::Ipv4(a)) => a.to_string(),
                Some(url::Host::Ipv6(a)) => a.to_string(),
                _ => return Err(bad("missing host".into())),
            };
            Endpoint::Tcp {
                host,
                port: url.port().unwrap_or(DEFAULT_PORT),
            }
        };
        Ok(NbdUri {
            endpoint,
            export,
            tls,
            tls_certificates,
        })
    }

    /// The host name to check the server certificate against.
    pub fn server_name(&self) -> &str {
        match &self.endpoint {
            Endpoint::Tcp { host, .. } => host,
            Endpoint::Unix(_) => "localhost",
        }
    }
}

impl FromStr for NbdUri {
    type Err = NbdError;
    fn from_str(s: &str) -> Result<Self, NbdError> {
        NbdUri::parse(s)
    }
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.tls { "nbds" } else { "nbd" };
        match &self.endpoint {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "{s}://[{host}]:{port}/{}", self.export)
            }
            Endpoint::Tcp { host, port } => write!(f, "{s}://{host}:{port}/{}", self.export),
            Endpoint::Unix(p) => write!(f, "{s}+unix:///{}?socket={}", self.export, p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms() {
        let u = NbdUri::parse("nbd://example.com:1234/disk%201").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Tcp {
                host: "example.com".into(),
                port: 1234
            }
        );
        assert_eq!(u.export, "disk 1");
        assert!(!u.tls);
        let u = NbdUri::parse("nbds://127.0.0.1/").unwrap();
        assert!(u.tls);
        assert_eq!(u.export, "");
        assert_eq!(
            u.endpoint,
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: DEFAULT_PORT
            }
        );
        let u = NbdUri::parse("nbd://[::1]:99").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Tcp {
                host: "::1".into(),
                port: 99
            }
        );
        let u = NbdUri::parse("nbd+unix:///exp?socket=/tmp/s.sock").unwrap();
        assert_eq!(u.endpoint, Endpoint::Unix("/tmp/s.sock".into()));
        assert_eq!(u.export, "exp");
        let u = NbdUri::parse("nbds+unix:///?socket=/s&tls-certificates=/pki").unwrap();
        assert!(u.tls);
        assert_eq!(u.tls_certificates, Some(PathBuf::from("/pki")));
        assert_eq!(u.to_string(), "nbds+unix:///?socket=/s");
    }

    #[test]
    fn rejects_bad_uris() {
        for bad in [
            "http://x/",
            "nbd+unix:///e",
            "nbd://",
            "nbd://h/?socket=/x",
            "nbd://h/?tls-psk-file=/x",
            "nbd://h/%zz",
            "nbd://h/%+f",
            "nbd://h/%-1",
            "not a uri",
        ] {
            assert!(
                matches!(NbdUri::parse(bad), Err(NbdError::Uri { .. })),
                "{bad} accepted"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_parses_or_fails_cleanly(s in "\\PC{0,80}") {
            let _ = NbdUri::parse(&s);
        }

        #[test]
        fn uri_like_strings_parse_or_fail_cleanly(
            scheme in "(nbd|nbds|nbd\\+unix|nbds\\+unix|http)",
            rest in "[a-z0-9:/?&=%\\[\\].@+-]{0,40}",
        ) {
            if let Ok(u) = NbdUri::parse(&format!("{scheme}://{rest}")) {
                if let Endpoint::Tcp { host, .. } = &u.endpoint {
                    proptest::prop_assert!(!host.is_empty());
                }
            }
        }

        #[test]
        fn display_round_trips(
            tls in proptest::bool::ANY,
            host in "([a-z][a-z0-9-]{0,10}(\\.[a-z]{1,5}){0,2}|127\\.0\\.0\\.[0-9]{1,2}|::1)",
            port in 1u16..,
            // Not "." or "..": URL path normalisation drops those segments.
            export in "([A-Za-z0-9_-][A-Za-z0-9._-]{0,11})?",
        ) {
            let u = NbdUri {
                endpoint: Endpoint::Tcp { host, port },
                export,
                tls,
                tls_certificates: None,
            };
            proptest::prop_assert_eq!(NbdUri::parse(&u.to_string()).unwrap(), u);
        }
    }
}
