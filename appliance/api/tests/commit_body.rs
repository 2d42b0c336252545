//! The storage node's commit body and request bodies (`ferry_api::node`): properties over
//! arbitrary inputs. The fuzz targets `commit` and `request` (appliance/api/fuzz) run the same
//! checks for longer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::tests_outside_test_module
)]

use ferry_api::node::{join_commit, split_commit, MissingRequest, PruneRequest};
use ferry_api::{parse_body, MAX_BODY};
use proptest::collection::vec;
use proptest::prelude::*;

fn objects() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    vec((any::<String>(), vec(any::<u8>(), 0..64)), 0..16)
}

proptest! {
    #[test]
    fn join_then_split_gives_the_objects_back(set in objects()) {
        let pairs: Vec<(String, &[u8])> = set.iter().map(|(k, b)| (k.clone(), &b[..])).collect();
        let body = join_commit(&pairs).unwrap();
        prop_assert_eq!(split_commit(&body).unwrap(), pairs);
    }

    #[test]
    fn split_never_panics_on_arbitrary_bytes(data in vec(any::<u8>(), 0..512)) {
        let _ = split_commit(&data);
    }

    #[test]
    fn split_never_panics_on_a_valid_header_and_arbitrary_rest(
        sizes in vec(any::<u64>(), 0..8),
        rest in vec(any::<u8>(), 0..256),
    ) {
        let h = serde_json::json!({
            "objects": sizes.iter().map(|s| serde_json::json!({"key": "k", "size": s})).collect::<Vec<_>>()
        })
        .to_string();
        let mut body = (h.len() as u32).to_le_bytes().to_vec();
        body.extend_from_slice(h.as_bytes());
        body.extend_from_slice(&rest);
        let r = split_commit(&body);
        // Accepted exactly when the sizes add up to the bytes that follow.
        let total = sizes.iter().try_fold(0u64, |a, s| a.checked_add(*s));
        prop_assert_eq!(r.is_ok(), total == Some(rest.len() as u64));
    }

    #[test]
    fn a_cut_or_padded_body_is_refused(set in objects(), cut in 1usize..8, pad in vec(any::<u8>(), 1..8)) {
        let pairs: Vec<(String, &[u8])> = set.iter().map(|(k, b)| (k.clone(), &b[..])).collect();
        let body = join_commit(&pairs).unwrap();
        prop_assert!(split_commit(&body[..body.len().saturating_sub(cut)]).is_err());
        let mut longer = body;
        longer.extend_from_slice(&pad);
        prop_assert!(split_commit(&longer).is_err());
    }

    #[test]
    fn node_request_bodies_round_trip(
        digests in vec("[0-9a-f]{64}", 0..32),
        group in proptest::option::of("[a-z0-9-]{1,16}"),
        keep in vec(proptest::option::of(any::<u32>()), 6),
        dry_run in any::<bool>(),
    ) {
        let m = MissingRequest { digests };
        prop_assert_eq!(parse_body::<MissingRequest>(&serde_json::to_vec(&m).unwrap()).unwrap(), m);
        let p = PruneRequest {
            group,
            keep_last: keep[0],
            keep_hourly: keep[1],
            keep_daily: keep[2],
            keep_weekly: keep[3],
            keep_monthly: keep[4],
            keep_yearly: keep[5],
            dry_run,
        };
        prop_assert_eq!(parse_body::<PruneRequest>(&serde_json::to_vec(&p).unwrap()).unwrap(), p);
    }

    #[test]
    fn node_request_parsers_never_panic(data in vec(any::<u8>(), 0..256)) {
        let _ = parse_body::<MissingRequest>(&data);
        let _ = parse_body::<PruneRequest>(&data);
    }
}

#[test]
fn a_header_over_the_body_limit_is_refused() {
    let mut body = ((MAX_BODY + 1) as u32).to_le_bytes().to_vec();
    body.resize(4 + MAX_BODY + 1, b' ');
    assert!(split_commit(&body).is_err());
}
