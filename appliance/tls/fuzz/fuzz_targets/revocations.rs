//! The revocation list an agent accepts from the network (`PUT /v1/revocations`, the list
//! fetched after each hello) and from its state dir: any bytes give an error, never a panic;
//! and a list the management CA signed fails verification once any byte of it, or of its
//! signature, is changed.
#![no_main]

use std::sync::OnceLock;

use ferry_tls::pki::Ca;
use ferry_tls::revocation::{RevocationList, Revoked, SignedRevocations};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    ca_pem: String,
    signed: SignedRevocations,
}

fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let ca = Ca::create("fuzz-ca").ok()?;
        let list = RevocationList {
            version: 7,
            issued_unix: 1_700_000_000,
            entries: vec![
                Revoked {
                    sha256: "ab".repeat(32),
                    role: "admin".into(),
                    name: "bob".into(),
                    revoked_unix: 1_699_999_999,
                },
                Revoked {
                    sha256: "CD".repeat(32),
                    role: "agent".into(),
                    name: "0123abcd".into(),
                    revoked_unix: 1_699_999_000,
                },
            ],
        };
        let signed = ca.sign_revocations(&list).ok()?;
        Some(Fixture {
            ca_pem: ca.cert_pem().to_string(),
            signed,
        })
    })
    .as_ref()
}

fuzz_target!(|data: &[u8]| {
    let Some(f) = fixture() else {
        panic!("fixture: the CA or the signed list could not be made");
    };
    // The body as the agent decodes it, then verified against the CA.
    if let Ok(s) = ferry_api::parse_body::<SignedRevocations>(data) {
        if let Ok(l) = s.verify(&f.ca_pem) {
            // Only the CA signs: a valid list here must be the fixture's.
            assert_eq!(s.list, f.signed.list, "a list the CA never signed verified");
            let _ = l.fingerprints();
        }
    }
    // The list JSON behind a valid signature.
    if let Ok(l) = ferry_api::parse_body::<RevocationList>(data) {
        let _ = l.fingerprints();
    }
    // Tampering: data[0] picks the field, data[1..3] the offset, the rest is XORed in.
    if data.len() >= 4 {
        let mut t = f.signed.clone();
        let field = if data[0] & 1 == 0 {
            &mut t.list
        } else {
            &mut t.signature
        };
        let mut bytes = std::mem::take(field).into_bytes();
        let at = usize::from(u16::from_le_bytes([data[1], data[2]])) % bytes.len().max(1);
        for (i, x) in data[3..].iter().enumerate() {
            if let Some(b) = bytes.get_mut(at + i) {
                *b ^= x;
            }
        }
        let Ok(s) = String::from_utf8(bytes) else {
            return;
        };
        *field = s;
        // Hex case is not the signature: the same signature bytes may verify.
        let same_sig = hex_eq(&t.signature, &f.signed.signature);
        if t.list != f.signed.list || !same_sig {
            assert!(
                t.verify(&f.ca_pem).is_err(),
                "a tampered list verified: {t:?}"
            );
        }
    }
});

fn hex_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}
