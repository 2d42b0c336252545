//! vSphere tags, for selecting VMs: tagging lives in the vSphere Automation REST API (vAPI),
//! not in vim25 SOAP.
//!
//! A lookup opens its own vAPI session with basic auth, over the same HTTPS client (and so
//! the same certificate trust) as the SOAP session: `POST /api/session` (vSphere 7.0U2 and
//! later), or `POST /rest/com/vmware/cis/session` where `/api` answers 404 (older servers).
//! It lists the tags, resolves each requested `tag` or `category/tag` to a tag id, lists
//! the objects attached to it, keeps the `VirtualMachine`s, and deletes the session. The
//! session id travels only in the `vmware-api-session-id` header and is never logged.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::client::{read_bounded, Client};
use crate::error::{FaultKind, Result, VsphereError};
use crate::soap::MoRef;

/// The answers' parsing, apart so that the fuzz target builds it alone.
#[doc(hidden)]
pub mod json;

const SESSION_HEADER: &str = "vmware-api-session-id";

/// The two spellings of the vAPI REST endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VapiDialect {
    /// `/api/...`: plain JSON answers, ids as path segments, `?action=`.
    Api,
    /// `/rest/com/vmware/...`: answers wrapped in `{"value": ...}`, `id:` ids, `?~action=`.
    Rest,
}

/// A requested tag: `name`, or `category/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSpec {
    /// Category name, when given.
    pub category: Option<String>,
    /// Tag name.
    pub name: String,
}

impl TagSpec {
    /// `category/tag` splits at the first `/`; anything else is a tag name.
    pub fn parse(s: &str) -> TagSpec {
        match s.split_once('/') {
            Some((c, n)) => TagSpec {
                category: Some(c.to_string()),
                name: n.to_string(),
            },
            None => TagSpec {
                category: None,
                name: s.to_string(),
            },
        }
    }
}

impl std::fmt::Display for TagSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.category {
            Some(c) => write!(f, "{c}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// An open vAPI session (deleted by [`VapiSession::close`]).
struct VapiSession<'a> {
    client: &'a Client,
    dialect: VapiDialect,
    id: String,
}

fn unwrap_value(dialect: VapiDialect, v: Value) -> Value {
    json::unwrap_value(dialect == VapiDialect::Rest, v)
}

impl Client {
    /// The VMs carrying each tag (`tag` or `category/tag`), in the order asked. A tag that
    /// does not exist, or a bare name that several categories use, is an error naming it.
    pub async fn vms_with_tags(&self, tags: &[String]) -> Result<Vec<(String, Vec<MoRef>)>> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let s = VapiSession::open(self).await?;
        let r = s.vms_with_tags(tags).await;
        s.close().await;
        r
    }

    /// Which vAPI spelling the server speaks (opens and closes a session).
    pub async fn vapi_dialect(&self) -> Result<VapiDialect> {
        let s = VapiSession::open(self).await?;
        let d = s.dialect;
        s.close().await;
        Ok(d)
    }
}

impl<'a> VapiSession<'a> {
    fn url(client: &Client, dialect: VapiDialect, segments: &[&str]) -> url::Url {
        let mut u = client.url().clone();
        u.set_query(None);
        u.set_path(match dialect {
            VapiDialect::Api => "/api",
            VapiDialect::Rest => "/rest/com/vmware/cis",
        });
        if let Ok(mut p) = u.path_segments_mut() {
            p.extend(segments);
        }
        u
    }

    async fn open(client: &'a Client) -> Result<VapiSession<'a>> {
        let creds = client.credentials();
        for dialect in [VapiDialect::Api, VapiDialect::Rest] {
            let what = "vAPI session login";
            let resp = client
                .http()
                .post(Self::url(client, dialect, &["session"]))
                .basic_auth(&creds.user, Some(creds.password.expose()))
                .header("Accept", "application/json")
                .send()
                .await
                .map_err(|e| client.map_http_error(what, e))?;
            let status = resp.status().as_u16();
            match status {
                // Not this spelling (or no vAPI at all, as on ESXi): the error after the loop.
                404 => continue,
                401 | 403 => {
                    tracing::warn!(user = %creds.user, "vSphere refused the vAPI login");
                    return Err(VsphereError::Fault {
                        method: what.into(),
                        kind: FaultKind::InvalidLogin,
                        message: format!("the server refused the login (HTTP {status})"),
                    });
                }
                s if !(200..300).contains(&s) => {
                    return Err(VsphereError::Status {
                        what: what.into(),
                        status,
                    })
                }
                _ => {}
            }
            let v = json_body(client, resp, what).await?;
            let Some(id) = json::session_id(unwrap_value(dialect, v)) else {
                return Err(shape(what, "no session id in the answer"));
            };
            tracing::debug!(?dialect, "vAPI session open");
            return Ok(VapiSession {
                client,
                dialect,
                id,
            });
        }
        Err(VsphereError::Invalid(format!(
            "{} has no vSphere Automation REST API (/api and /rest answer 404): tags need vCenter",
            client.url().host_str().unwrap_or_default()
        )))
    }

    async fn close(self) {
        let r = self
            .client
            .http()
            .delete(Self::url(self.client, self.dialect, &["session"]))
            .header(SESSION_HEADER, &self.id)
            .send()
            .await;
        if let Err(e) = r {
            tracing::debug!("vAPI logout: {}", e.without_url());
        }
    }

    /// `kind` is `tag`, `category` or `tag-association`.
    fn tagging_url(&self, kind: &str, id: Option<&str>, action: Option<&str>) -> url::Url {
        let id_seg = id.map(|i| match self.dialect {
            VapiDialect::Api => i.to_string(),
            VapiDialect::Rest => format!("id:{i}"),
        });
        let mut segs = vec!["tagging", kind];
        if let Some(i) = &id_seg {
            segs.push(i);
        }
        let mut u = if self.dialect == VapiDialect::Api {
            let mut s = vec!["cis"];
            s.extend(segs);
            Self::url(self.client, self.dialect, &s)
        } else {
            Self::url(self.client, self.dialect, &segs)
        };
        if let Some(a) = action {
            let key = match self.dialect {
                VapiDialect::Api => "action",
                VapiDialect::Rest => "~action",
            };
            u.query_pairs_mut().append_pair(key, a);
        }
        u
    }

    async fn call(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Value> {
        let resp = req
            .header(SESSION_HEADER, &self.id)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| self.client.map_http_error(what, e))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(VsphereError::Status {
                what: what.to_string(),
                status,
            });
        }
        let v = json_body(self.client, resp, what).await?;
        Ok(unwrap_value(self.dialect, v))
    }

    async fn get(&self, u: url::Url, what: &str) -> Result<Value> {
        self.call(self.client.http().get(u), what).await
    }

    async fn vms_with_tags(&self, wanted: &[String]) -> Result<Vec<(String, Vec<MoRef>)>> {
        let specs: Vec<TagSpec> = wanted.iter().map(|s| TagSpec::parse(s)).collect();
        let ids = json::strings(
            self.get(self.tagging_url("tag", None, None), "listing tags")
                .await?,
        );
        // Read every tag whose name is asked for; categories only for those.
        let mut named: HashMap<String, Vec<(String, String)>> = HashMap::new(); // name -> (id, category id)
        for id in ids {
            let t = self
                .get(self.tagging_url("tag", Some(&id), None), "reading a tag")
                .await?;
            let name = json::name(&t);
            if specs.iter().any(|s| s.name == name) {
                let cat = json::category_id(&t);
                named
                    .entry(name.to_string())
                    .or_default()
                    .push((id.clone(), cat.to_string()));
            }
        }
        let mut categories: BTreeMap<String, String> = BTreeMap::new(); // id -> name
        for (_, cat) in named.values().flatten() {
            if !cat.is_empty() && !categories.contains_key(cat) {
                let c = self
                    .get(
                        self.tagging_url("category", Some(cat), None),
                        "reading a tag category",
                    )
                    .await?;
                let n = json::name(&c);
                categories.insert(cat.clone(), n.to_string());
            }
        }
        let mut out = Vec::new();
        for (spec, text) in specs.iter().zip(wanted) {
            let cands: Vec<&(String, String)> = named
                .get(&spec.name)
                .map(|v| {
                    v.iter()
                        .filter(|(_, c)| {
                            spec.category
                                .as_ref()
                                .is_none_or(|want| categories.get(c) == Some(want))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let tag_id = match cands.as_slice() {
                [] => return Err(VsphereError::NotFound(format!("vSphere tag {text:?}"))),
                [(id, _)] => id.clone(),
                many => {
                    let cats: Vec<&str> = many
                        .iter()
                        .map(|(_, c)| categories.get(c).map_or("?", String::as_str))
                        .collect();
                    return Err(VsphereError::Invalid(format!(
                        "vSphere tag {text:?} exists in several categories ({}): write \"CATEGORY/{}\"",
                        cats.join(", "),
                        spec.name
                    )));
                }
            };
            let attached = self
                .call(
                    self.client
                        .http()
                        .post(self.tagging_url(
                            "tag-association",
                            Some(&tag_id),
                            Some("list-attached-objects"),
                        ))
                        .header("Content-Type", "application/json")
                        .body("{}"),
                    "listing the objects of a tag",
                )
                .await?;
            let vms = json::attached_vm_ids(&attached)
                .into_iter()
                .map(|id| MoRef::new("VirtualMachine", id))
                .collect();
            out.push((text.clone(), vms));
        }
        Ok(out)
    }
}

fn shape(what: &str, why: &str) -> VsphereError {
    VsphereError::Vapi {
        what: what.to_string(),
        message: why.to_string(),
    }
}

async fn json_body(client: &Client, resp: reqwest::Response, what: &str) -> Result<Value> {
    const LIMIT: usize = 16 << 20;
    let data = match read_bounded(resp, LIMIT, what).await {
        Ok(d) => d,
        Err(Some(e)) => return Err(client.map_http_error(what, e)),
        Err(None) => {
            return Err(VsphereError::TooLarge {
                what: what.to_string(),
                limit: LIMIT,
            })
        }
    };
    json::body(&data).map_err(|e| shape(what, &format!("not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_specs() {
        assert_eq!(
            TagSpec::parse("tier/gold"),
            TagSpec {
                category: Some("tier".into()),
                name: "gold".into()
            }
        );
        assert_eq!(TagSpec::parse("gold").category, None);
        assert_eq!(TagSpec::parse("a/b/c").name, "b/c");
        assert_eq!(TagSpec::parse("tier/gold").to_string(), "tier/gold");
    }

    #[test]
    fn rest_answers_are_unwrapped() {
        let v: Value = serde_json::from_str(r#"{"value":["a","b"]}"#).unwrap();
        assert_eq!(
            json::strings(unwrap_value(VapiDialect::Rest, v)),
            vec!["a", "b"]
        );
        let v: Value = serde_json::from_str(r#"["a"]"#).unwrap();
        assert_eq!(json::strings(unwrap_value(VapiDialect::Api, v)), vec!["a"]);
        assert!(json::strings(Value::Null).is_empty());
    }
}
