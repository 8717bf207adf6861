//! Replacing a fan-out job's tokens: never panics, a JSON body stays JSON,
//! and a body is only changed when it has a top-level `tokens`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let token = misiva::job::DeviceToken::parse("t", &"ab".repeat(32)).unwrap();
    let out = misiva::job::body_with_tokens(data, &[token]);
    if out != data {
        let before: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(data).expect("only a JSON object is changed");
        assert!(before.contains_key("tokens"));
        let after: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&out).expect("a JSON object stays one");
        assert_eq!(after.len(), before.len());
    }
});
