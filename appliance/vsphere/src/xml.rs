//! The response parser: a small, bounded DOM over quick-xml's namespace-aware reader.
//!
//! vim25 dispatches on `xsi:type`, which serde cannot do, so responses are parsed into
//! [`Node`]s and typed extractors walk them. The `xsi` prefix is resolved through the
//! namespace bindings (the simulator writes `XMLSchema-instance:type`). There is no DTD
//! support at all: a `<!DOCTYPE` is an error, so entity expansion attacks cannot start, and
//! only the five predefined entities and character references are accepted. Depth, node
//! count and text size are bounded; the caller bounds the input size.

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

/// The XML Schema instance namespace (`xsi:type`).
pub const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Nesting depth limit: vim25 responses nest far less than this.
pub const MAX_DEPTH: usize = 128;
/// Element count limit per document.
pub const MAX_NODES: usize = 2_000_000;
/// Text limit per element.
pub const MAX_TEXT: usize = 16 << 20;

/// Why a document was refused.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// Not well-formed XML.
    #[error("malformed XML at byte {pos}: {why}")]
    Malformed {
        /// Byte offset in the input.
        pos: u64,
        /// What is wrong.
        why: String,
    },
    /// A DTD, which vim25 never sends.
    #[error("XML with a DTD is refused")]
    Dtd,
    /// A configured bound was exceeded.
    #[error("XML exceeds the limit on {0}")]
    TooLarge(&'static str),
    /// Not UTF-8.
    #[error("XML is not UTF-8")]
    NotUtf8,
    /// Well-formed, but not the expected shape.
    #[error("unexpected response: {0}")]
    Shape(String),
}

/// One element: namespace, local name, `xsi:type` (local part), attributes by local name,
/// children and concatenated text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// Namespace URI, empty when unbound.
    pub ns: String,
    /// Local name.
    pub name: String,
    /// Local part of `xsi:type`, when present.
    pub xsi_type: Option<String>,
    /// Attributes other than namespace declarations and `xsi:type`: unprefixed ones by
    /// local name, namespaced ones as `{ns}local`.
    pub attrs: Vec<(String, String)>,
    /// Child elements in order.
    pub children: Vec<Node>,
    /// Text content directly inside this element.
    pub text: String,
}

impl Node {
    /// First child with this local name.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// All children with this local name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Follows a path of child names.
    pub fn path(&self, names: &[&str]) -> Option<&Node> {
        let mut n = self;
        for name in names {
            n = n.child(name)?;
        }
        Some(n)
    }

    /// Text of the child at `names`, trimmed.
    pub fn text_at(&self, names: &[&str]) -> Option<&str> {
        self.path(names).map(|n| n.text.trim())
    }

    /// An attribute by local name.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every descendant (depth first, self excluded) whose `xsi:type` is `ty`.
    pub fn descendants_of_type<'a>(&'a self, ty: &str, out: &mut Vec<&'a Node>) {
        for c in &self.children {
            if c.xsi_type.as_deref() == Some(ty) {
                out.push(c);
            }
            c.descendants_of_type(ty, out);
        }
    }

    /// The text parsed as a number.
    pub fn parse_at<T: std::str::FromStr>(&self, names: &[&str]) -> Option<T> {
        self.text_at(names)?.parse().ok()
    }
}

fn local_of(qname: &str) -> &str {
    qname.rsplit(':').next().unwrap_or(qname)
}

/// Parses a whole document and returns its root element.
pub fn parse(input: &[u8]) -> Result<Node, XmlError> {
    let text = std::str::from_utf8(input).map_err(|_| XmlError::NotUtf8)?;
    let mut reader = NsReader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut nodes = 0usize;
    loop {
        let pos = reader.buffer_position();
        let malformed = |e: quick_xml::Error| XmlError::Malformed {
            pos,
            why: e.to_string(),
        };
        let (ns, event) = reader.read_resolved_event().map_err(malformed)?;
        let ns = match ns {
            ResolveResult::Bound(n) => n.into_inner().to_string(),
            ResolveResult::Unbound => String::new(),
            ResolveResult::Unknown(p) => {
                return Err(XmlError::Malformed {
                    pos,
                    why: format!("unbound namespace prefix {p:?}"),
                })
            }
        };
        match event {
            Event::Start(e) | Event::Empty(e) if root.is_some() => {
                let _ = e;
                return Err(XmlError::Shape("content after the root element".into()));
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                nodes += 1;
                if nodes > MAX_NODES {
                    return Err(XmlError::TooLarge("element count"));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooLarge("nesting depth"));
                }
                let mut node = Node {
                    ns,
                    name: e.local_name().into_inner().to_string(),
                    ..Node::default()
                };
                for a in e.attributes() {
                    let a = a.map_err(|e| XmlError::Malformed {
                        pos,
                        why: e.to_string(),
                    })?;
                    let key = a.key;
                    if key.as_namespace_binding().is_some() {
                        continue;
                    }
                    let value = a
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|e| XmlError::Malformed {
                            pos,
                            why: e.to_string(),
                        })?
                        .into_owned();
                    let (ans, local) = reader.resolver().resolve_attribute(key);
                    let local = local.into_inner().to_string();
                    match ans {
                        ResolveResult::Bound(n) if n.into_inner() == XSI_NS && local == "type" => {
                            node.xsi_type = Some(local_of(&value).to_string());
                        }
                        // Namespaced attributes keep their namespace, so they never
                        // shadow the plain ones vim25 uses (`type` of a moref).
                        ResolveResult::Bound(n) => {
                            node.attrs
                                .push((format!("{{{}}}{local}", n.into_inner()), value));
                        }
                        _ => node.attrs.push((local, value)),
                    }
                }
                if matches!(event, Event::Empty(_)) {
                    attach(&mut stack, &mut root, node);
                } else {
                    stack.push(node);
                }
            }
            Event::End(_) => {
                let node = stack
                    .pop()
                    .ok_or_else(|| XmlError::Shape("unbalanced end tag".into()))?;
                attach(&mut stack, &mut root, node);
            }
            Event::Text(t) => {
                let s = t.xml10_content();
                push_text(&mut stack, &s)?;
            }
            Event::CData(t) => {
                push_text(&mut stack, &t.xml10_content())?;
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref().map_err(malformed)? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.xml10_content().into_owned();
                        match quick_xml::escape::resolve_predefined_entity(&name) {
                            Some(s) => s.to_string(),
                            None => {
                                return Err(XmlError::Malformed {
                                    pos,
                                    why: format!("unknown entity &{name};"),
                                })
                            }
                        }
                    }
                };
                push_text(&mut stack, &c)?;
            }
            Event::DocType(_) => return Err(XmlError::Dtd),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlError::Malformed {
            pos: reader.buffer_position(),
            why: "unexpected end of document".into(),
        });
    }
    root.ok_or_else(|| XmlError::Shape("empty document".into()))
}

fn push_text(stack: &mut [Node], s: &str) -> Result<(), XmlError> {
    match stack.last_mut() {
        Some(n) => {
            if n.text.len() + s.len() > MAX_TEXT {
                return Err(XmlError::TooLarge("text size"));
            }
            n.text.push_str(s);
            Ok(())
        }
        // Whitespace around the root is fine; anything else is not XML.
        None if s.trim().is_empty() => Ok(()),
        None => Err(XmlError::Shape("text outside the root element".into())),
    }
}

fn attach(stack: &mut [Node], root: &mut Option<Node>, node: Node) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(node),
        None => *root = Some(node),
    }
}

/// Escapes text for an element body or attribute.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xsi_type_through_any_prefix() {
        let doc = br#"<?xml version="1.0"?><a xmlns="urn:vim25" xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance"><b XMLSchema-instance:type="VirtualDisk" k="1">x &amp; y&#65;</b></a>"#;
        let n = parse(doc).unwrap();
        assert_eq!(n.ns, "urn:vim25");
        let b = n.child("b").unwrap();
        assert_eq!(b.xsi_type.as_deref(), Some("VirtualDisk"));
        assert_eq!(b.attr("k"), Some("1"));
        assert_eq!(b.text, "x & yA");
    }

    #[test]
    fn type_attr_in_other_namespace_is_not_xsi() {
        let doc = br#"<a xmlns:x="urn:other"><b x:type="Nope" type="Folder">f</b></a>"#;
        let b = parse(doc).unwrap().children[0].clone();
        assert_eq!(b.xsi_type, None);
        assert_eq!(b.attr("type"), Some("Folder"));
    }

    #[test]
    fn dtd_and_unknown_entities_are_refused() {
        let lol = br#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><a>&lol2;</a>"#;
        assert!(matches!(parse(lol), Err(XmlError::Dtd)));
        assert!(parse(b"<a>&lol;</a>").is_err());
    }

    #[test]
    fn depth_is_bounded() {
        let mut doc = String::new();
        for _ in 0..(MAX_DEPTH + 5) {
            doc.push_str("<a>");
        }
        assert!(matches!(
            parse(doc.as_bytes()),
            Err(XmlError::TooLarge("nesting depth"))
        ));
    }

    #[test]
    fn malformed_documents_are_errors() {
        for d in [
            &b"<a><b></a>"[..],
            b"<a>",
            b"",
            b"<a></a><b/>",
            b"\xff\xfe",
            b"<p:a/>",
        ] {
            assert!(parse(d).is_err(), "{:?}", String::from_utf8_lossy(d));
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&data);
        }

        #[test]
        fn text_round_trips(s in "\\PC{0,64}") {
            let doc = format!("<a>{}</a>", escape(&s));
            let n = parse(doc.as_bytes()).unwrap();
            proptest::prop_assert_eq!(n.text, s);
        }
    }
}
