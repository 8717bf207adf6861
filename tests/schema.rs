//! `docs/job.schema.json` and the worker's decoder agree on every job of the
//! corpus in `tests/corpus/jobs/`: `valid/` both accept, `invalid/` both
//! reject, and `decoder-only/` holds what JSON Schema cannot state (the
//! payload size limit, tokens equal ignoring case), which the schema accepts
//! and the decoder rejects.

use std::path::{Path, PathBuf};

fn corpus(kind: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/jobs")
        .join(kind);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

fn schema() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/job.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::draft202012::new(&schema).expect("the schema is a valid JSON Schema")
}

fn schema_accepts(validator: &jsonschema::Validator, body: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => validator.is_valid(&value),
        Err(_) => false,
    }
}

fn decoder_accepts(body: &[u8]) -> bool {
    misiva::job::decode(body, None).is_ok()
}

#[test]
fn the_schema_and_the_decoder_agree_on_every_example() {
    let validator = schema();
    let mut checked = 0;
    for (kind, schema_ok, decoder_ok) in [
        ("valid", true, true),
        ("invalid", false, false),
        ("decoder-only", true, false),
    ] {
        let files = corpus(kind);
        assert!(files.len() >= 2, "{kind}: too few examples");
        for (path, body) in files {
            let name = path.file_name().unwrap().to_string_lossy();
            assert_eq!(
                schema_accepts(&validator, &body),
                schema_ok,
                "{kind}/{name}: the schema {}",
                if schema_ok {
                    "rejects it"
                } else {
                    "accepts it"
                }
            );
            assert_eq!(
                decoder_accepts(&body),
                decoder_ok,
                "{kind}/{name}: the decoder {}: {:?}",
                if decoder_ok {
                    "rejects it"
                } else {
                    "accepts it"
                },
                misiva::job::decode(&body, None).err()
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "{checked}");
}

/// Every job the README and the examples show is valid by both.
#[test]
fn the_shipped_sample_jobs_are_valid() {
    let validator = schema();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/jobs.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let valid = schema_accepts(&validator, line.as_bytes());
        assert_eq!(valid, decoder_accepts(line.as_bytes()), "{line}");
    }
}
