//! `docs/job.schema.json` and the worker's decoder agree on every job of the
//! corpus in `tests/corpus/jobs/`: `valid/` both accept, `invalid/` both
//! reject, and `decoder-only/` holds what JSON Schema cannot state (the
//! payload size limit, tokens equal ignoring case), which the schema accepts
//! and the decoder rejects.
//!
//! The schema is judged by Ajv (npm; `scripts/test.sh` installs it into
//! `target/node`), the validator most publishers' tooling uses. Its
//! `pattern` is ECMA-262's regular expression, as JSON Schema specifies:
//! Python's `re`, for one, lets `$` match before a final newline.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

/// Reads the schema path as its argument and one hex-encoded body per line
/// on stdin; writes `1` (valid) or `0` per body. Bytes that are not UTF-8 or
/// not JSON are `0`, as the worker's JSON parser refuses them too.
const AJV: &str = r#"
const Ajv2020 = require("ajv/dist/2020");
const fs = require("fs");
const schema = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
const validate = new Ajv2020({ strict: false, validateFormats: false }).compile(schema);
const utf8 = new TextDecoder("utf-8", { fatal: true });
const out = [];
for (const line of fs.readFileSync(0, "utf8").split("\n")) {
  if (line === "") continue;
  let doc;
  try {
    doc = JSON.parse(utf8.decode(Buffer.from(line, "hex")));
  } catch (e) {
    out.push("0");
    continue;
  }
  out.push(validate(doc) ? "1" : "0");
}
process.stdout.write(out.join("\n") + "\n");
"#;

/// Whether `docs/job.schema.json` accepts each body, by Ajv.
fn schema_accepts(bodies: &[&[u8]]) -> Vec<bool> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let modules = root.join("target/node/node_modules");
    assert!(
        modules.join("ajv").is_dir(),
        "Ajv is missing: run scripts/test.sh, or `npm install --prefix target/node ajv@8.20.0`"
    );
    let mut child = Command::new("node")
        .arg("-e")
        .arg(AJV)
        .arg(root.join("docs/job.schema.json"))
        .env("NODE_PATH", &modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let mut input = String::new();
    for body in bodies {
        for byte in *body {
            // Writing into a String cannot fail.
            let _ = write!(input, "{byte:02x}");
        }
        input.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "Ajv did not accept the schema or failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<bool> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l == "1")
        .collect();
    assert_eq!(verdicts.len(), bodies.len(), "one verdict per body");
    verdicts
}

fn decoder_accepts(body: &[u8]) -> bool {
    misiva::job::decode(body, None).is_ok()
}

#[test]
fn the_schema_and_the_decoder_agree_on_every_example() {
    let mut checked = 0;
    for (kind, schema_ok, decoder_ok) in [
        ("valid", true, true),
        ("invalid", false, false),
        ("decoder-only", true, false),
    ] {
        let files = corpus(kind);
        assert!(files.len() >= 2, "{kind}: too few examples");
        let bodies: Vec<&[u8]> = files.iter().map(|(_, body)| body.as_slice()).collect();
        let verdicts = schema_accepts(&bodies);
        for ((path, body), schema_says) in files.iter().zip(verdicts) {
            let name = path.file_name().unwrap().to_string_lossy();
            assert_eq!(
                schema_says,
                schema_ok,
                "{kind}/{name}: the schema {}",
                if schema_ok {
                    "rejects it"
                } else {
                    "accepts it"
                }
            );
            assert_eq!(
                decoder_accepts(body),
                decoder_ok,
                "{kind}/{name}: the decoder {}: {:?}",
                if decoder_ok {
                    "rejects it"
                } else {
                    "accepts it"
                },
                misiva::job::decode(body, None).err()
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "{checked}");
}

/// Every job the README and the examples show is judged alike by both (a
/// few are meant to fail, to show dead letters).
#[test]
fn the_shipped_sample_jobs_are_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/jobs.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    let bodies: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    for (line, valid) in lines.iter().zip(schema_accepts(&bodies)) {
        assert_eq!(valid, decoder_accepts(line.as_bytes()), "{line}");
    }
}
