//! `POST /v1/admins` on the management server: the body (name and CSR), the name check and
//! the CSR the CA signs, as `Mgmt::create_admin` runs them. Any bytes give an error, never a
//! panic; whatever the CSR asked for, the certificate names the admin the CA chose.
#![no_main]

use std::sync::OnceLock;

use ferry_tls::pki::{Ca, Role};
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../../../server/mgmt/src/wire.rs"]
mod wire;

fn ca() -> Option<&'static Ca> {
    static CA: OnceLock<Option<Ca>> = OnceLock::new();
    CA.get_or_init(|| Ca::create("fuzz-ca").ok()).as_ref()
}

fuzz_target!(|data: &[u8]| {
    let Some(ca) = ca() else {
        panic!("fixture: the CA could not be made");
    };
    // The body as the server decodes it, then what create_admin does before the database.
    if let Ok(req) = ferry_api::parse_body::<wire::AdminCreate>(data) {
        if wire::check_admin_name(&req.name).is_ok() {
            if let Ok(pem) = ca.sign_csr(&req.csr_pem, Role::Admin, &req.name, 825) {
                let sha = ferry_tls::pem_sha256(&pem);
                assert!(
                    sha.is_ok(),
                    "the CA issued a certificate that does not parse"
                );
            }
        }
    }
    // Raw bytes as the CSR's DER: the parser behind the PEM armour, without base64 in the way.
    let der = rustls_pki_types::CertificateSigningRequestDer::from(data);
    let _ = rcgen::CertificateSigningRequestParams::from_der(&der);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = ca.sign_csr(s, Role::Admin, "fuzz", 825);
    }
});
