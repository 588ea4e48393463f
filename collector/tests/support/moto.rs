//! moto's server mode (`moto_server` from the repository's `.venv`, installed by
//! `scripts/setup.sh`) on a free port of 127.0.0.1: S3 with Object Lock and legal holds, and
//! KMS, which s3s-fs does not speak. Killed on drop. Clients find the test keys in the
//! environment (moto accepts any), as the s3s-fs harness sets them.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

/// The region of every test client.
pub const REGION: &str = "us-east-1";

/// A running moto server.
pub struct Moto {
    child: Child,
    port: u16,
}

/// The test keys (moto accepts any), for the clients of both services.
fn credentials() -> Credentials {
    Credentials::new("moto-test", "moto-test", None, None, "test")
}

fn binary() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/setup.sh (requirements.txt pins moto[server])",
        venv.display()
    );
    venv
}

impl Moto {
    /// Starts a server and waits until it answers.
    pub fn start() -> Self {
        // SAFETY: set before any client of this test process reads the environment; the
        // values are the same in every test of the binary.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "moto-test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "moto-test");
            std::env::remove_var("AWS_SESSION_TOKEN");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        }
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new(binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An S3 client of the server.
    pub fn s3(&self) -> Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(credentials())
            .endpoint_url(self.endpoint_url())
            .force_path_style(true)
            .build();
        Client::from_conf(config)
    }

    /// A KMS client of the server.
    pub async fn kms(&self) -> aws_sdk_kms::Client {
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new(REGION))
            .credentials_provider(credentials())
            .endpoint_url(self.endpoint_url())
            .build();
        aws_sdk_kms::Client::from_conf(config)
    }

    /// Creates `bucket` with Object Lock on (and so versioning).
    pub async fn object_lock_bucket(&self, bucket: &str) {
        self.s3()
            .create_bucket()
            .bucket(bucket)
            .object_lock_enabled_for_bucket(true)
            .send()
            .await
            .expect("CreateBucket with Object Lock");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
