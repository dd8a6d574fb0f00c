//! Property tests of the group's request handler (the fuzz target `group_request` runs the
//! same handler on raw bytes for longer): any request — well-formed headers with hostile
//! values, or arbitrary bytes — is answered without a panic, and a request naming another
//! run is never accepted.

use proptest::prelude::*;
use sinter_comms::group::fuzzing::{Handler, RUN};

const KINDS: [&str; 14] = [
    "Hello",
    "Ready",
    "Group",
    "Leave",
    "StateManifest",
    "StateChunk",
    "BlobManifest",
    "BlobChunk",
    "Shard",
    "ContributionManifest",
    "ContributionChunk",
    "ContributionProof",
    "Extension",
    "Status",
];

fn number() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::json!(0)),
        Just(serde_json::json!(3)),
        Just(serde_json::json!(4)),
        Just(serde_json::json!(u64::MAX)),
        Just(serde_json::json!(u32::MAX)),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(1e300)),
        any::<u64>().prop_map(|n| serde_json::json!(n)),
    ]
}

fn text() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::json!(RUN)),
        Just(serde_json::json!("../../etc/passwd")),
        Just(serde_json::json!("运行🦀\u{202e}\u{0}")),
        Just(serde_json::json!(
            "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
        )),
        "\\PC{0,40}".prop_map(|s| serde_json::json!(s)),
        (0usize..100_000).prop_map(|n| serde_json::json!("x".repeat(n))),
    ]
}

fn value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![number(), text(), Just(serde_json::Value::Null)];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop::collection::vec(inner, 0..4).prop_map(serde_json::Value::Array)
    })
}

/// A header of a known kind whose fields (the right names, and a few wrong ones) carry any
/// value.
fn header() -> impl Strategy<Value = Vec<u8>> {
    let fields = [
        "run",
        "round",
        "state",
        "addrs",
        "members",
        "states",
        "config",
        "index",
        "root",
        "shard",
        "group",
        "stage",
        "contributors",
        "extra",
    ];
    (
        prop::sample::select(KINDS.to_vec()),
        prop::collection::btree_map(prop::sample::select(fields.to_vec()), value(), 0..8),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(kind, fields, named_run, frame)| {
            let mut body: serde_json::Map<String, serde_json::Value> = fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            if named_run {
                body.insert("run".into(), serde_json::json!(RUN));
            }
            body.entry("stage")
                .and_modify(|s| *s = serde_json::json!("Contribution"));
            let header = match kind {
                "Status" => serde_json::json!("Status"),
                _ => serde_json::json!({ kind: body }),
            };
            Handler::request(&serde_json::to_vec(&header).unwrap(), &frame)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn hostile_headers_are_answered_without_a_panic(
        requests in prop::collection::vec((any::<u8>(), header()), 1..8)
    ) {
        let handler = Handler::new();
        for (sender, request) in requests {
            handler.handle(sender, &request);
        }
    }

    #[test]
    fn arbitrary_bytes_are_answered_without_a_panic(
        sender in any::<u8>(),
        data in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        Handler::new().handle(sender, &data);
    }

    #[test]
    fn another_runs_requests_are_never_accepted(
        sender in any::<u8>(),
        run in "[a-z0-9]{1,20}",
        round in any::<u64>(),
    ) {
        prop_assume!(run != RUN);
        let header = serde_json::json!({"StateManifest": {"run": run, "round": round}});
        let request = Handler::request(&serde_json::to_vec(&header).unwrap(), &[]);
        prop_assert!(!Handler::new().handle(sender, &request));
    }
}
