//! A real moto server (`python3 -m moto.server`) as the AWS Lambda API, with SigV4 checking
//! on: see tests/fixtures/moto_lambda.py for what it is given.

use super::{free_port, wait_until};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Moto {
    pub url: String,
    pub access_key: String,
    pub secret_key: String,
    child: Child,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = std::fs::File::create(std::env::temp_dir().join(format!("gatehouse-moto-{port}.log"))).expect("moto log file");
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "5")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start moto (scripts/setup installs it)");
        let addr = format!("127.0.0.1:{port}");
        wait_until(Duration::from_secs(30), "moto to listen", || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/moto_lambda.py");
        let out = Command::new("python3")
            .arg(fixture)
            .arg(&url)
            .output()
            .expect("run the moto fixture");
        assert!(
            out.status.success(),
            "moto fixture failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let keys: serde_json::Value = serde_json::from_slice(&out.stdout).expect("keys from the fixture");
        Moto {
            url,
            access_key: keys["access_key"].as_str().expect("access key").to_string(),
            secret_key: keys["secret_key"].as_str().expect("secret key").to_string(),
            child,
        }
    }

    /// What the next invocations answer, in order (moto's Lambda without Docker).
    pub fn queue(&self, results: &[&str]) {
        let body = serde_json::json!({"results": results, "region": "us-east-1"}).to_string();
        let addr = self.url.trim_start_matches("http://");
        let r = super::request(
            addr,
            "POST",
            "/moto-api/static/lambda-simple/response",
            &[("Content-Type", "application/json")],
            Some(&body),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
