//! Job decoding: never panics, and every error is short enough to be a dead
//! letter's detail as it is.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = misiva::job::decode(data, None) {
        assert!(e.to_string().len() <= 600, "{} bytes", e.to_string().len());
    }
});
