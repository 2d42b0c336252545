//! OVF: renders the descriptor template (`ovf/ferry.ovf.in`).
//!
//! Placeholders are `@@NAME@@` (upper case, digits, `_`). Every placeholder
//! in the template must have a value and every value must be used; anything
//! left that looks like a placeholder is an error, so a template change can
//! never ship half-rendered. Values are XML-escaped.

use std::collections::BTreeMap;

use crate::error::{ImageError, Result};

/// The template, compiled in so the binary works from any directory.
pub const TEMPLATE: &str = include_str!("../../ovf/ferry.ovf.in");

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Renders `template` with `vars`.
pub fn render(template: &str, vars: &BTreeMap<&str, String>) -> Result<String> {
    let mut out = String::with_capacity(template.len() + 256);
    let mut used = std::collections::BTreeSet::new();
    let mut rest = template;
    while let Some(i) = rest.find("@@") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find("@@").ok_or_else(|| {
            ImageError::Template(format!("unterminated placeholder near {:?}", head(after)))
        })?;
        let name = &after[..end];
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ImageError::Template(format!(
                "malformed placeholder @@{}@@",
                head(name)
            )));
        }
        let v = vars
            .get(name)
            .ok_or_else(|| ImageError::Template(format!("no value for @@{name}@@")))?;
        out.push_str(&escape(v));
        used.insert(name);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    if let Some(unused) = vars.keys().find(|k| !used.contains(*k)) {
        return Err(ImageError::Template(format!(
            "value for @@{unused}@@ is not used by the template"
        )));
    }
    if out.contains("@@") {
        return Err(ImageError::Template("a placeholder is left".into()));
    }
    Ok(out)
}

fn head(s: &str) -> String {
    s.chars().take(40).collect()
}

/// The values the descriptor needs.
#[derive(Debug, Clone)]
pub struct OvfValues {
    pub version: String,
    pub disk_file: String,
    pub disk_file_size: u64,
    pub disk_capacity: u64,
    pub disk_populated: u64,
}

/// Renders the shipped template.
pub fn render_descriptor(v: &OvfValues) -> Result<String> {
    let vars = BTreeMap::from([
        ("VERSION", v.version.clone()),
        ("DISK_FILE", v.disk_file.clone()),
        ("DISK_FILE_SIZE", v.disk_file_size.to_string()),
        ("DISK_CAPACITY", v.disk_capacity.to_string()),
        ("DISK_POPULATED", v.disk_populated.to_string()),
    ]);
    render(TEMPLATE, &vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_refuses_leftovers() {
        let vars = BTreeMap::from([("A", "x<y".to_string())]);
        assert_eq!(render("1 @@A@@ 2", &vars).unwrap(), "1 x&lt;y 2");
        assert!(render("@@A@@ @@B@@", &vars).is_err());
        assert!(render("@@A@@ @@", &vars).is_err());
        assert!(render("no placeholders", &vars).is_err(), "unused value");
        assert!(render("@@a b@@ @@A@@", &vars).is_err());
    }

    #[test]
    fn shipped_template_renders() {
        let s = render_descriptor(&OvfValues {
            version: "1.2.3".into(),
            disk_file: "d.vmdk".into(),
            disk_file_size: 10,
            disk_capacity: 1 << 30,
            disk_populated: 1 << 20,
        })
        .unwrap();
        assert!(s.contains(r#"ovf:capacity="1073741824""#));
        assert!(!s.contains("@@"));
    }
}
