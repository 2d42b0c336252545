//! OVF environment: parses `ovf-env.xml` (DMTF DSP0243, the document vCenter
//! hands a deployed VM through the `iso` transport or `guestinfo.ovfEnv`).
//!
//! Only the properties are read: the `Property` elements (`oe:key`,
//! `oe:value`) of the `PropertySection` that is a direct child of the root
//! `Environment`. `Entity` elements (siblings in a vApp), `PlatformSection`
//! and VMware's `ve:EthernetAdapterSection` are skipped.
//!
//! The input is untrusted: the size, the number of properties and the length
//! of keys and values are bounded, DTDs are refused (quick-xml never expands
//! entities other than the five predefined ones and character references),
//! and every error is a value, never a panic.

use std::collections::BTreeMap;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::{NsReader, XmlVersion};

/// Namespace of the OVF environment.
pub const ENV_NS: &str = "http://schemas.dmtf.org/ovf/environment/1";
/// Largest document accepted.
pub const MAX_DOC: usize = 1 << 20;
/// Most properties accepted.
pub const MAX_PROPERTIES: usize = 512;
/// Longest key accepted.
pub const MAX_KEY: usize = 256;
/// Longest value accepted.
pub const MAX_VALUE: usize = 16 * 1024;
/// Deepest element nesting accepted.
const MAX_DEPTH: usize = 64;

/// Why a document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OvfEnvError {
    #[error("document is {0} bytes, more than {MAX_DOC}")]
    TooLarge(usize),
    #[error("not well-formed XML at byte {pos}: {msg}")]
    Xml { pos: u64, msg: String },
    #[error("DTDs are not allowed")]
    Dtd,
    #[error("the root element is not an OVF Environment ({0})")]
    NotEnvironment(String),
    #[error("no root element")]
    Empty,
    #[error("elements nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("more than {MAX_PROPERTIES} properties")]
    TooManyProperties,
    #[error("a Property has no key")]
    MissingKey,
    #[error("property {0:?}: key longer than {MAX_KEY} bytes or not printable")]
    BadKey(String),
    #[error("property {0}: value longer than {MAX_VALUE} bytes")]
    ValueTooLong(String),
    #[error("property {0} appears twice")]
    Duplicate(String),
}

/// The properties of an OVF environment document, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OvfEnv {
    pub properties: BTreeMap<String, String>,
}

fn xml_err(pos: u64, e: impl std::fmt::Display) -> OvfEnvError {
    OvfEnvError::Xml {
        pos,
        msg: e.to_string(),
    }
}

fn in_env_ns(r: &ResolveResult<'_>) -> bool {
    matches!(r, ResolveResult::Bound(Namespace(ns)) if *ns == ENV_NS)
}

/// Parses an `ovf-env.xml` document.
pub fn parse(doc: &[u8]) -> Result<OvfEnv, OvfEnvError> {
    if doc.len() > MAX_DOC {
        return Err(OvfEnvError::TooLarge(doc.len()));
    }
    let mut reader = NsReader::from_reader(doc);
    let cfg = reader.config_mut();
    cfg.check_end_names = true;
    cfg.expand_empty_elements = false;
    let mut buf = Vec::new();
    let mut env = OvfEnv::default();
    // Path of local names from the root, to know where we are.
    let mut path: Vec<String> = Vec::new();
    let mut seen_root = false;
    loop {
        let pos = reader.buffer_position();
        let ev = reader
            .read_resolved_event_into(&mut buf)
            .map_err(|e| xml_err(pos, e))?;
        match ev {
            (_, Event::DocType(_)) => return Err(OvfEnvError::Dtd),
            (ns, Event::Start(e)) => {
                let local = e.local_name().as_ref().to_string();
                if path.is_empty() {
                    check_root(&ns, &local, seen_root)?;
                    seen_root = true;
                }
                if path.len() >= MAX_DEPTH {
                    return Err(OvfEnvError::TooDeep);
                }
                if is_property(&path, &ns, &local) {
                    property(&reader, &e, &mut env)?;
                }
                path.push(local);
            }
            (ns, Event::Empty(e)) => {
                let local = e.local_name().as_ref().to_string();
                if path.is_empty() {
                    check_root(&ns, &local, seen_root)?;
                    seen_root = true;
                }
                if is_property(&path, &ns, &local) {
                    property(&reader, &e, &mut env)?;
                }
            }
            (_, Event::End(_)) => {
                path.pop();
            }
            (_, Event::Text(t))
                if path.is_empty()
                    && !AsRef::<str>::as_ref(&t).chars().all(char::is_whitespace) =>
            {
                return Err(xml_err(pos, "text outside the root element"));
            }
            (_, Event::Eof) => break,
            _ => {}
        }
        buf.clear();
    }
    if !path.is_empty() {
        return Err(xml_err(
            reader.buffer_position(),
            "unexpected end of document",
        ));
    }
    if !seen_root {
        return Err(OvfEnvError::Empty);
    }
    Ok(env)
}

fn check_root(ns: &ResolveResult<'_>, local: &str, seen: bool) -> Result<(), OvfEnvError> {
    if seen {
        return Err(xml_err(0, "more than one root element"));
    }
    if local != "Environment" || !in_env_ns(ns) {
        return Err(OvfEnvError::NotEnvironment(
            local.chars().take(64).collect(),
        ));
    }
    Ok(())
}

/// `Environment/PropertySection/Property`, in the environment namespace.
fn is_property(path: &[String], ns: &ResolveResult<'_>, local: &str) -> bool {
    path.len() == 2 && path[1] == "PropertySection" && local == "Property" && in_env_ns(ns)
}

fn property(
    reader: &NsReader<&[u8]>,
    e: &BytesStart<'_>,
    env: &mut OvfEnv,
) -> Result<(), OvfEnvError> {
    let mut key = None;
    let mut value = None;
    for a in e.attributes() {
        let a = a.map_err(|err| xml_err(reader.buffer_position(), err))?;
        let (ns, local) = reader.resolver().resolve_attribute(a.key);
        // Qualified (oe:key) as the schema says; unqualified tolerated.
        if !(in_env_ns(&ns) || matches!(ns, ResolveResult::Unbound)) {
            continue;
        }
        let v = a
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|err| xml_err(reader.buffer_position(), err))?
            .into_owned();
        match local.as_ref() {
            "key" => key = Some(v),
            "value" => value = Some(v),
            _ => {}
        }
    }
    let key = key.ok_or(OvfEnvError::MissingKey)?;
    if key.is_empty() || key.len() > MAX_KEY || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(OvfEnvError::BadKey(key.chars().take(64).collect()));
    }
    let value = value.unwrap_or_default();
    if value.len() > MAX_VALUE {
        return Err(OvfEnvError::ValueTooLong(key));
    }
    if env.properties.len() >= MAX_PROPERTIES {
        return Err(OvfEnvError::TooManyProperties);
    }
    if env.properties.contains_key(&key) {
        return Err(OvfEnvError::Duplicate(key));
    }
    env.properties.insert(key, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VCENTER: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Environment
     xmlns="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
     xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:ve="http://www.vmware.com/schema/ovfenv"
     oe:id=""
     ve:vCenterId="vm-42">
   <PlatformSection>
      <Kind>VMware ESXi</Kind>
      <Version>8.0.2</Version>
      <Vendor>VMware, Inc.</Vendor>
      <Locale>en</Locale>
   </PlatformSection>
   <PropertySection>
         <Property oe:key="ferry.hostname" oe:value="backup-01"/>
         <Property oe:key="ferry.ip" oe:value="192.0.2.10"/>
         <Property oe:key="ferry.token" oe:value="a&amp;b&lt;c&quot;"/>
         <Property oe:key="ferry.ntp" oe:value=""/>
   </PropertySection>
   <ve:EthernetAdapterSection>
      <ve:Adapter ve:mac="00:50:56:aa:bb:cc" ve:network="VM Network" ve:unitNumber="7"/>
   </ve:EthernetAdapterSection>
</Environment>
"#;

    #[test]
    fn vcenter_document() {
        let env = parse(VCENTER.as_bytes()).unwrap();
        assert_eq!(env.properties.len(), 4);
        assert_eq!(env.properties["ferry.hostname"], "backup-01");
        assert_eq!(env.properties["ferry.token"], "a&b<c\"");
        assert_eq!(env.properties["ferry.ntp"], "");
    }

    #[test]
    fn sibling_entities_are_ignored() {
        let doc = r#"<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1">
  <PropertySection><Property oe:key="a" oe:value="1"/></PropertySection>
  <Entity oe:id="other"><PropertySection><Property oe:key="a" oe:value="2"/></PropertySection></Entity>
</Environment>"#;
        let env = parse(doc.as_bytes()).unwrap();
        assert_eq!(env.properties["a"], "1");
    }

    #[test]
    fn refusals() {
        type Case<'a> = (&'a str, fn(&OvfEnvError) -> bool);
        let cases: &[Case<'_>] = &[
            ("", |e| *e == OvfEnvError::Empty),
            ("<Environment", |e| matches!(e, OvfEnvError::Xml { .. })),
            ("<Envelope xmlns='http://schemas.dmtf.org/ovf/envelope/1'/>", |e| {
                matches!(e, OvfEnvError::NotEnvironment(_))
            }),
            ("<Environment/>", |e| matches!(e, OvfEnvError::NotEnvironment(_))),
            (
                "<!DOCTYPE x [<!ENTITY a 'b'>]><Environment xmlns='http://schemas.dmtf.org/ovf/environment/1'/>",
                |e| *e == OvfEnvError::Dtd,
            ),
            (
                "<Environment xmlns='http://schemas.dmtf.org/ovf/environment/1'><PropertySection><Property value='x'/></PropertySection></Environment>",
                |e| *e == OvfEnvError::MissingKey,
            ),
            (
                "<Environment xmlns='http://schemas.dmtf.org/ovf/environment/1'><PropertySection><Property key='a'/><Property key='a'/></PropertySection></Environment>",
                |e| matches!(e, OvfEnvError::Duplicate(_)),
            ),
            (
                "<Environment xmlns='http://schemas.dmtf.org/ovf/environment/1'><PropertySection></Environment>",
                |e| matches!(e, OvfEnvError::Xml { .. }),
            ),
            (
                "<Environment xmlns='http://schemas.dmtf.org/ovf/environment/1'><PropertySection><Property key='a' value='&bogus;'/></PropertySection></Environment>",
                |e| matches!(e, OvfEnvError::Xml { .. }),
            ),
        ];
        for (doc, ok) in cases {
            let e = parse(doc.as_bytes()).unwrap_err();
            assert!(ok(&e), "{doc}: {e:?}");
        }
        assert!(matches!(
            parse(&vec![b' '; MAX_DOC + 1]),
            Err(OvfEnvError::TooLarge(_))
        ));
        let deep = format!(
            "<Environment xmlns='http://schemas.dmtf.org/ovf/environment/1'>{}{}</Environment>",
            "<a>".repeat(100),
            "</a>".repeat(100)
        );
        assert_eq!(parse(deep.as_bytes()), Err(OvfEnvError::TooDeep));
    }

    fn doc_of(props: &BTreeMap<String, String>) -> String {
        let mut s = String::from(
            "<Environment xmlns='http://schemas.dmtf.org/ovf/environment/1' xmlns:oe='http://schemas.dmtf.org/ovf/environment/1'><PropertySection>",
        );
        for (k, v) in props {
            let esc = |x: &str| {
                x.replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('\'', "&apos;")
                    .replace('"', "&quot;")
            };
            s.push_str(&format!(
                "<Property oe:key='{}' oe:value='{}'/>",
                esc(k),
                esc(v)
            ));
        }
        s.push_str("</PropertySection></Environment>");
        s
    }

    proptest! {
        #[test]
        fn round_trips(props in proptest::collection::btree_map("[!-~]{1,40}", "[ -~]{0,80}", 0..20)) {
            let env = parse(doc_of(&props).as_bytes()).unwrap();
            prop_assert_eq!(env.properties, props);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_documents_never_panic(cut in 0usize..900, byte in any::<u8>()) {
            let mut d = VCENTER.as_bytes().to_vec();
            let i = cut.min(d.len() - 1);
            d[i] = byte;
            let _ = parse(&d);
            let _ = parse(&d[..i]);
        }
    }
}
