//! The signed revocation list an agent accepts from the network: properties over arbitrary
//! lists, tampering and bytes. The fuzz target `revocations` (appliance/tls/fuzz) runs the
//! same checks for longer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use std::sync::OnceLock;

use ferry_tls::pki::Ca;
use ferry_tls::revocation::{RevocationList, Revoked, SignedRevocations};
use proptest::collection::vec;
use proptest::prelude::*;

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| Ca::create("props-ca").unwrap())
}

fn other_ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| Ca::create("props-ca").unwrap())
}

fn lists() -> impl Strategy<Value = RevocationList> {
    let entry = (
        "[0-9a-fA-F]{64}",
        "agent|admin",
        any::<String>(),
        any::<i64>(),
    )
        .prop_map(|(sha256, role, name, revoked_unix)| Revoked {
            sha256,
            role,
            name,
            revoked_unix,
        });
    (any::<u64>(), any::<i64>(), vec(entry, 0..6)).prop_map(|(version, issued_unix, entries)| {
        RevocationList {
            version,
            issued_unix,
            entries,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_signed_list_verifies_as_itself(l in lists()) {
        let s = ca().sign_revocations(&l).unwrap();
        prop_assert_eq!(s.verify(ca().cert_pem()).unwrap(), l);
        // Same key name, another key: refused.
        prop_assert!(s.verify(other_ca().cert_pem()).is_err());
    }

    #[test]
    fn any_changed_byte_of_the_list_fails(l in lists(), at in any::<prop::sample::Index>(), x in 1u8..=255) {
        let s = ca().sign_revocations(&l).unwrap();
        let mut b = s.list.clone().into_bytes();
        let i = at.index(b.len());
        b[i] ^= x;
        // Only lists an agent could receive: the list travels as a JSON string.
        if let Ok(list) = String::from_utf8(b) {
            let t = SignedRevocations { list, signature: s.signature.clone() };
            prop_assert!(t.verify(ca().cert_pem()).is_err(), "byte {} ^ {:#x} verified", i, x);
        }
    }

    #[test]
    fn any_changed_byte_of_the_signature_fails(l in lists(), at in any::<prop::sample::Index>(), x in 1u8..=255) {
        let s = ca().sign_revocations(&l).unwrap();
        let mut sig = hex::decode(&s.signature).unwrap();
        let i = at.index(sig.len());
        sig[i] ^= x;
        let t = SignedRevocations { list: s.list.clone(), signature: hex::encode(&sig) };
        prop_assert!(t.verify(ca().cert_pem()).is_err(), "signature byte {} ^ {:#x} verified", i, x);
    }

    #[test]
    fn a_cut_or_extended_list_fails(l in lists(), cut in 1usize..16, tail in "[ -~]{1,8}") {
        let s = ca().sign_revocations(&l).unwrap();
        let n = s.list.len().saturating_sub(cut);
        if let Some(cut) = s.list.get(..n) {
            let t = SignedRevocations { list: cut.to_string(), signature: s.signature.clone() };
            prop_assert!(t.verify(ca().cert_pem()).is_err());
        }
        let t = SignedRevocations { list: format!("{}{tail}", s.list), signature: s.signature.clone() };
        prop_assert!(t.verify(ca().cert_pem()).is_err());
    }

    #[test]
    fn arbitrary_bodies_are_refused_without_panic(data in vec(any::<u8>(), 0..512)) {
        if let Ok(s) = ferry_api::parse_body::<SignedRevocations>(&data) {
            prop_assert!(s.verify(ca().cert_pem()).is_err());
        }
    }
}
