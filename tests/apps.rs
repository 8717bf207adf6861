//! `misiva apps check DIR` (CONTRACT §8): a directory of app files checked
//! offline, every problem listed, exit 2; a clean directory exits 0.

mod support;

use std::path::Path;
use std::process::Command;

fn apps_check(dir: &Path) -> (i32, String, String) {
    support::output_of(
        Command::new(env!("CARGO_BIN_EXE_misiva"))
            .args(["apps", "check"])
            .arg(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default()),
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

const TOKEN: &str =
    "key_file = \"keys/good.p8\"\nkey_id = \"KEY1234567\"\nteam_id = \"TEAM123456\"\n";
/// A password that must never be printed.
const PASSWORD: &str = "never-print-this-pw";

#[test]
fn every_kind_of_mistake_is_listed_and_the_exit_code_is_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("keys")).unwrap();
    std::fs::write(d.join("keys/good.p8"), misiva::jwt::generate_p8()).unwrap();
    std::fs::write(d.join("keys/garbage.p8"), "not a key").unwrap();
    std::fs::write(d.join("keys/garbage.pem"), "not a certificate").unwrap();
    // Two good apps: relative paths are relative to the directory.
    write(
        d,
        "good.toml",
        &format!("{TOKEN}topic = \"com.example.good\"\n"),
    );
    write(
        d,
        "sandboxed.toml",
        &format!("{TOKEN}endpoint = \"sandbox\"\n"),
    );
    // Not app files: skipped, not problems.
    write(d, "README", "apps live here");
    std::fs::create_dir(d.join("..data")).unwrap();
    write(d, ".hidden.toml", "garbage [");
    // Every kind of mistake, one file each: (file, words its problem says).
    let mistakes: [(&str, &str, &str); 11] = [
        ("broken.toml", "key_file = \"keys/good.p8\n", "not valid"),
        (
            "unknown-key.toml",
            &format!("{TOKEN}colour = \"red\"\n"),
            "colour",
        ),
        (
            "no-credentials.toml",
            "topic = \"com.example.x\"\n",
            "no credentials",
        ),
        (
            "both.toml",
            &format!("{TOKEN}cert_file = \"keys/garbage.pem\"\n"),
            "choose one",
        ),
        (
            "no-team.toml",
            "key_file = \"keys/good.p8\"\nkey_id = \"KEY1234567\"\n",
            "team id",
        ),
        (
            "missing-key.toml",
            "key_file = \"keys/absent.p8\"\nkey_id = \"K\"\nteam_id = \"T\"\n",
            "absent.p8",
        ),
        (
            "bad-key.toml",
            "key_file = \"keys/garbage.p8\"\nkey_id = \"K\"\nteam_id = \"T\"\n",
            "garbage.p8",
        ),
        (
            "bad-cert.toml",
            &format!("cert_file = \"keys/garbage.pem\"\ncert_password = \"{PASSWORD}\"\n"),
            "garbage.pem",
        ),
        (
            "bad-endpoint.toml",
            &format!("{TOKEN}endpoint = \"http://plain.example\"\n"),
            "endpoint",
        ),
        (
            "range.toml",
            &format!("{TOKEN}connections = 0\n"),
            "connections",
        ),
        ("bad name.toml", TOKEN, "file name"),
    ];
    for (file, text, _) in &mistakes {
        write(d, file, text);
    }

    let (code, out, err) = apps_check(d);
    println!("{out}{err}");
    assert_eq!(code, 2, "{out}{err}");
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem")).collect();
    assert_eq!(problems.len(), mistakes.len(), "{out}");
    for (file, _, says) in &mistakes {
        let line = problems
            .iter()
            .find(|l| l.contains(&format!("/{file}: ")))
            .unwrap_or_else(|| panic!("no problem listed for {file}: {out}"));
        assert!(line.contains(says), "{file}: {line}");
    }
    let ok: Vec<&str> = out.lines().filter(|l| l.starts_with("ok")).collect();
    assert_eq!(ok.len(), 2, "{out}");
    assert!(
        ok[0].contains("good") && ok[0].contains("token auth, key KEY1234567"),
        "{out}"
    );
    assert!(
        ok[1].contains("sandboxed") && ok[1].contains("sandbox"),
        "{out}"
    );
    assert!(
        !out.contains(PASSWORD) && !err.contains(PASSWORD),
        "a password was printed"
    );
    assert!(err.contains("2 app(s) ok, 11 problem(s)"), "{err}");

    // Without the mistakes, the same directory passes.
    for (file, _, _) in &mistakes {
        std::fs::remove_file(d.join(file)).unwrap();
    }
    let (code, out, err) = apps_check(d);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("problem"), "{out}");
}

#[test]
fn a_directory_that_cannot_be_read_exits_2() {
    let (code, _, err) = apps_check(Path::new("/nonexistent/misiva-apps"));
    assert_eq!(code, 2);
    assert!(err.contains("cannot read the directory"), "{err}");
}
