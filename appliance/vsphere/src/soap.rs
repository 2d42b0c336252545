//! vim25 SOAP framing: request envelopes, managed object references, fault decoding.

use crate::error::{FaultKind, VsphereError};
use crate::xml::{self, Node};

/// A managed object reference (`type` + value, e.g. `VirtualMachine:vm-42`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MoRef {
    /// The managed object type.
    pub kind: String,
    /// The server's id for it.
    pub value: String,
}

impl MoRef {
    /// A reference.
    pub fn new(kind: &str, value: &str) -> Self {
        MoRef {
            kind: kind.to_string(),
            value: value.to_string(),
        }
    }

    /// Reads `<x type="T">value</x>`.
    pub fn from_node(n: &Node) -> Option<MoRef> {
        let kind = n.attr("type")?;
        let value = n.text.trim();
        (!kind.is_empty() && !value.is_empty()).then(|| MoRef::new(kind, value))
    }

    /// The element `<tag type="T">value</tag>`.
    pub fn xml(&self, tag: &str) -> String {
        format!(
            "<{tag} type=\"{}\">{}</{tag}>",
            xml::escape(&self.kind),
            xml::escape(&self.value)
        )
    }
}

impl std::fmt::Display for MoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// `<tag>escaped text</tag>`.
pub fn el(tag: &str, text: &str) -> String {
    format!("<{tag}>{}</{tag}>", xml::escape(text))
}

/// The request envelope for `method` with the given parameter XML.
pub fn envelope(method: &str, params: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\
<soapenv:Body><{method} xmlns=\"urn:vim25\">{params}</{method}></soapenv:Body></soapenv:Envelope>"
    )
}

/// Maps a fault type name (`xsi:type`, or element name without `Fault`) to its kind.
pub fn fault_kind(ty: &str, detail: Option<&Node>) -> FaultKind {
    match ty {
        "InvalidLogin" => FaultKind::InvalidLogin,
        "NotAuthenticated" => FaultKind::NotAuthenticated,
        "ManagedObjectNotFound" => FaultKind::ManagedObjectNotFound {
            obj: detail
                .and_then(|d| d.child("obj"))
                .and_then(MoRef::from_node)
                .map(|m| m.to_string())
                .unwrap_or_default(),
        },
        "InvalidState" | "InvalidPowerState" => FaultKind::InvalidState,
        "TaskInProgress" => FaultKind::TaskInProgress,
        "InvalidArgument" => FaultKind::InvalidArgument {
            property: detail
                .and_then(|d| d.text_at(&["invalidProperty"]))
                .unwrap_or_default()
                .to_string(),
        },
        other => FaultKind::Other(other.to_string()),
    }
}

/// Decodes a parsed response: the `<method>Response` element, or the fault as an error.
pub fn decode_response(method: &str, doc: &Node) -> Result<Node, VsphereError> {
    let shape = |why: &str| VsphereError::Xml {
        what: method.to_string(),
        error: xml::XmlError::Shape(why.to_string()),
    };
    if doc.name != "Envelope" {
        return Err(shape("not a SOAP envelope"));
    }
    let body = doc.child("Body").ok_or_else(|| shape("no SOAP body"))?;
    if let Some(f) = body.child("Fault") {
        return Err(decode_fault(method, f));
    }
    let want = format!("{method}Response");
    body.children
        .iter()
        .find(|c| c.name == want)
        .cloned()
        .ok_or_else(|| shape(&format!("no {want} in the body")))
}

/// A `soapenv:Fault` as a typed error.
pub fn decode_fault(method: &str, f: &Node) -> VsphereError {
    let message = f.text_at(&["faultstring"]).unwrap_or("").to_string();
    let detail = f.child("detail").and_then(|d| d.children.first());
    let ty = detail
        .map(|d| {
            d.xsi_type
                .clone()
                .unwrap_or_else(|| d.name.trim_end_matches("Fault").to_string())
        })
        .unwrap_or_else(|| "SoapFault".to_string());
    VsphereError::Fault {
        method: method.to_string(),
        kind: fault_kind(&ty, detail),
        message,
    }
}

/// A `LocalizedMethodFault` (task `info.error`) as a typed error.
pub fn decode_method_fault(what: &str, e: &Node) -> VsphereError {
    let fault = e.child("fault");
    let ty = fault
        .and_then(|f| f.xsi_type.clone())
        .unwrap_or_else(|| "MethodFault".into());
    VsphereError::Fault {
        method: what.to_string(),
        kind: fault_kind(&ty, fault),
        message: e.text_at(&["localizedMessage"]).unwrap_or("").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_decode_to_kinds() {
        let doc = br#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>gone</faultstring><detail><Fault xmlns="urn:vim25" XMLSchema-instance:type="ManagedObjectNotFound"><obj type="VirtualMachine">vm-9</obj></Fault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        let n = xml::parse(doc).unwrap();
        let e = decode_response("X", &n).unwrap_err();
        assert_eq!(
            e.fault(),
            Some(&FaultKind::ManagedObjectNotFound {
                obj: "VirtualMachine:vm-9".into()
            })
        );
        assert!(e.to_string().contains("gone"));
    }

    #[test]
    fn fault_without_xsi_type_uses_element_name() {
        let doc = br#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body><e:Fault><faultstring>bad</faultstring><detail><InvalidLoginFault xmlns="urn:vim25"/></detail></e:Fault></e:Body></e:Envelope>"#;
        let e = decode_response("Login", &xml::parse(doc).unwrap()).unwrap_err();
        assert_eq!(e.fault(), Some(&FaultKind::InvalidLogin));
    }

    #[test]
    fn moref_xml_escapes() {
        let m = MoRef::new("Folder", "a<b");
        assert_eq!(m.xml("_this"), "<_this type=\"Folder\">a&lt;b</_this>");
    }
}
