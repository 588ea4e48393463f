//! A real S3-compatible server for tests: `s3s-fs` (installed by `scripts/setup.sh`) on a
//! free port of 127.0.0.1, storing its objects in a fresh directory, with SigV4 signatures
//! checked against fixed test keys, and one fresh bucket per server.
//!
//! The sink under test finds its credentials through aws-config's default chain, like in
//! production. [`S3Server::start`] therefore puts [`ACCESS_KEY`] and [`SECRET_KEY`] into this
//! test process's environment once (drops any session token, turns the instance metadata
//! service off), before any client is built. The harness's own client
//! ([`S3Server::client`], used by [`S3Server::objects`]) is given the server's keys
//! directly, so it works even against a server started with other keys
//! ([`S3Server::start_with_keys`]).

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, ResponseChecksumValidation};
use aws_sdk_s3::error::DisplayErrorContext;
use tollgate_collector::config::S3Config;
use tollgate_test_support::{TempDir, temp_dir};

/// Access key every test client finds in the environment.
pub const ACCESS_KEY: &str = "tollgate-test-access-key";
/// Secret key every test client finds in the environment.
pub const SECRET_KEY: &str = "tollgate-test-secret-key";
/// Region of the test buckets (s3s-fs accepts any; the signature covers it).
pub const REGION: &str = "us-east-1";

/// How long a starting server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Distinguishes the directories and buckets of the servers of one test process.
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A running (or stopped) s3s-fs server with one bucket. Killed, and its data removed, on
/// drop.
#[derive(Debug)]
pub struct S3Server {
    binary: PathBuf,
    port: u16,
    dir: TempDir,
    access_key: String,
    secret_key: String,
    bucket: String,
    client: Client,
    child: Option<Child>,
}

#[allow(
    dead_code,
    reason = "each test binary uses its own part of the harness"
)]
impl S3Server {
    /// A server that accepts the keys the environment gives every client ([`ACCESS_KEY`],
    /// [`SECRET_KEY`]), with a fresh empty bucket.
    pub async fn start() -> Self {
        Self::start_with_keys(ACCESS_KEY, SECRET_KEY).await
    }

    /// A server that accepts only `access_key`/`secret_key`: with other keys than
    /// [`ACCESS_KEY`]/[`SECRET_KEY`], clients from the default chain are refused.
    pub async fn start_with_keys(access_key: &str, secret_key: &str) -> Self {
        set_credentials_env();
        let binary = find_binary();
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let dir = temp_dir("s3s-fs");
        std::fs::create_dir(dir.path().join("data")).expect("creating the server's data directory");
        let port = free_port();
        let mut server = Self {
            binary,
            port,
            dir,
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            bucket: format!("tollgate-test-{}-{sequence}", std::process::id()),
            client: test_client(port, access_key, secret_key),
            child: None,
        };
        server.spawn().await;
        server
            .client
            .create_bucket()
            .bucket(&server.bucket)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "creating bucket {}: {}\n{}",
                    server.bucket,
                    DisplayErrorContext(e),
                    server.log()
                )
            });
        server
    }

    /// Kills the server (its data stays for [`S3Server::restart`]). Requests fail with
    /// "connection refused" until then.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The process may have exited already; either way it is gone after `wait`.
            let _ = child.kill();
            child.wait().expect("waiting for s3s-fs to exit");
        }
    }

    /// Starts the server again on the same port and data directory: objects and the bucket
    /// survive. Stops it first if it is running.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Sink settings for this server's bucket under `prefix` (path-style, [`REGION`]); the
    /// other fields have the configuration's defaults.
    pub fn config(&self, prefix: &str) -> S3Config {
        serde_json::from_value(serde_json::json!({
            "region": REGION,
            "bucket": self.bucket,
            "prefix": prefix,
            "endpoint_url": self.endpoint_url(),
            "path_style": true,
        }))
        .expect("the test S3 configuration is valid")
    }

    /// A client holding the server's own keys, for checks beyond [`S3Server::objects`].
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Every object of the bucket as a client sees it (ListObjectsV2, then GetObject of each),
    /// sorted by key.
    pub async fn objects(&self) -> Vec<(String, Vec<u8>)> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.unwrap_or_else(|e| panic!("ListObjectsV2: {}", DisplayErrorContext(e)));
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        keys.sort();
        let mut objects = Vec::with_capacity(keys.len());
        for key in keys {
            let object = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GetObject {key}: {}", DisplayErrorContext(e)));
            let bytes = object
                .body
                .collect()
                .await
                .unwrap_or_else(|e| panic!("reading object {key}: {}", DisplayErrorContext(e)))
                .to_vec();
            objects.push((key, bytes));
        }
        objects
    }

    /// Every request the server has received so far (across restarts), one string each:
    /// method, URI (`/bucket/key?x-id=PutObject`) and headers, as s3s logs them at debug
    /// level (`Request { method: PUT, uri: …, headers: {"x-amz-…": "…", …}, … }`).
    pub fn requests(&self) -> Vec<String> {
        const MARKER: &str = "s3s::service: req: ";
        self.log()
            .lines()
            .filter_map(|line| {
                line.split_once(MARKER)
                    .map(|(_, request)| request.to_owned())
            })
            .collect()
    }

    /// What the server has logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Starts the process and waits until its port accepts connections.
    async fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening the server's log file");
        let child = Command::new(&self.binary)
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--access-key")
            .arg(&self.access_key)
            .arg("--secret-key")
            .arg(&self.secret_key)
            .arg(self.dir.path().join("data"))
            .env("RUST_LOG", "s3s=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().transpose()) {
                let status = status.expect("checking on s3s-fs");
                self.child = None;
                panic!(
                    "s3s-fs exited ({status}) before accepting connections on port {}:\n{}",
                    self.port,
                    self.log()
                );
            }
            if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
                .await
                .is_ok()
            {
                return;
            }
            if Instant::now() >= deadline {
                self.stop();
                panic!(
                    "s3s-fs did not accept connections on port {} within {READY_TIMEOUT:?}:\n{}",
                    self.port,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Gives the default credential chain the test keys, once per process.
fn set_credentials_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the values are constants, and every test reaches this point before it
        // builds a client (the only readers of these variables); concurrent callers wait on
        // the `Once` until the variables are set.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
            std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
            std::env::remove_var("AWS_SESSION_TOKEN");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        }
    });
}

/// The `s3s-fs` binary: on `PATH`, else in `$HOME/.cargo/bin`.
fn find_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>());
    let in_cargo_home = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin"));
    on_path
        .chain(in_cargo_home)
        .map(|dir| dir.join("s3s-fs"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "s3s-fs not found on PATH or in $HOME/.cargo/bin: run scripts/setup.sh \
                 (it installs s3s-fs 0.14.1 with cargo install)"
            )
        })
}

/// A port of 127.0.0.1 nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("finding a free port on 127.0.0.1")
        .port()
}

/// A path-style client for the server on `port` with the given keys.
fn test_client(port: u16, access_key: &str, secret_key: &str) -> Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .force_path_style(true)
        // s3s-fs 0.14.1 keeps the previous object's checksum when a multipart upload
        // overwrites a key (fixed upstream by s3s-project/s3s#829), so GetObject would fail
        // the SDK's response check after such an overwrite. The tests compare whole bodies
        // byte for byte instead.
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .credentials_provider(Credentials::new(
            access_key,
            secret_key,
            None,
            None,
            "s3s-fs-test",
        ))
        .build();
    Client::from_conf(config)
}
