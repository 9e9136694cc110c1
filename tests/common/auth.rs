//! The consumers most auth tests share (keys, a basic-auth password hashed by the real
//! `gatehouse hash-password`, a JWT subject), and the environment their secrets come from.

use super::Gateway;

pub fn consumers() -> String {
    r#"
[consumers.acme]
groups = ["partners"]
keys = ["env:GH_TEST_ACME_KEY"]
jwt_subject = "acme-service"
[consumers.bob]
groups = ["staff"]
keys = ["bob-key-0002"]
basic_auth = { username = "bob", password_hash = "HASH" }
[consumers.guest]
groups = ["guests"]
"#
    .replace("HASH", &hash("correct horse"))
}

pub fn hash(pw: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(Gateway::bin())
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{pw}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn env() -> Vec<(&'static str, &'static str)> {
    vec![("GH_TEST_ACME_KEY", "acme-key-0001")]
}
