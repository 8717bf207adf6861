//! Replacing a fan-out job's tokens: never panics, a JSON object stays a
//! JSON object with the same keys, and nothing else is ever changed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

// Raw values: numbers out of f64's range are still JSON.
type Object<'a> = BTreeMap<String, &'a RawValue>;

fuzz_target!(|data: &[u8]| {
    let token = misiva::job::DeviceToken::parse("t", &"ab".repeat(32)).unwrap();
    let out = misiva::job::body_with_tokens(data, &[token]);
    if out != data {
        let before: Object<'_> = serde_json::from_slice(data).expect("only a JSON object is changed");
        assert!(before.contains_key("tokens"));
        let after: Object<'_> = serde_json::from_slice(&out).expect("a JSON object stays one");
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>()
        );
    }
});
