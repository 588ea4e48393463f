//! A node's collector as far as the digest chain sees it: the real spool and sealer, files
//! committed with their facts, digests sealed and signed with a local key, and the spool's
//! `ready/` delivered into a flow directory as the local sink does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tollgate_collector::{
    chain::Sealer,
    clock::{compact_utc, partition_date},
    config::SigningConfig,
    loss::LossSpan,
    spool::{Commit, FileFacts, Spool, pending_in, remove},
};

/// Every digest interval of these tests: one hour.
pub const INTERVAL: Duration = Duration::from_secs(3600);

/// A simulated node.
pub struct Node {
    pub name: String,
    pub cluster: String,
    pub spool_dir: PathBuf,
    pub key_file: PathBuf,
    pub spool: Option<Spool>,
    pub sealer: Sealer,
}

impl Node {
    /// A node of `cluster` whose spool and key are under `dir`, started at `now_s`.
    pub fn start(dir: &Path, cluster: &str, name: &str, now_s: u64) -> Self {
        let spool_dir = dir.join(format!("spool-{name}"));
        let key_file = dir.join(format!("key-{name}.pem"));
        Self::start_with(spool_dir, key_file, cluster, name, now_s)
    }

    fn start_with(
        spool_dir: PathBuf,
        key_file: PathBuf,
        cluster: &str,
        name: &str,
        now_s: u64,
    ) -> Self {
        let (spool, _) = Spool::open(&spool_dir, 1 << 30, now_s).unwrap();
        let sealer = Sealer::new(
            &spool_dir,
            cluster,
            name,
            INTERVAL,
            SigningConfig::LocalKey {
                key_file: Some(key_file.clone()),
            },
            now_s,
        );
        Self {
            name: name.to_owned(),
            cluster: cluster.to_owned(),
            spool_dir,
            key_file,
            spool: Some(spool),
            sealer,
        }
    }

    fn spool(&mut self) -> &mut Spool {
        self.spool.as_mut().expect("a running node")
    }

    /// Begins a file (taking a sequence number) and writes `bytes` into it; returns its
    /// sequence number and temporary path.
    pub fn begin(&mut self, bytes: &[u8]) -> (u64, PathBuf) {
        let (sequence, temp) = self.spool().begin().unwrap();
        std::fs::write(&temp, bytes).unwrap();
        (sequence, temp)
    }

    /// Spools one flow file of records from `at_s`, with `losses` among them; returns its key.
    pub fn write(&mut self, at_s: u64, losses: Vec<LossSpan>) -> String {
        let content = format!("flow file of {} at {at_s}", self.name);
        self.write_content(at_s, content.as_bytes(), losses)
    }

    /// Spools `content` as the flow file of records from `at_s`; returns its key.
    pub fn write_content(&mut self, at_s: u64, content: &[u8], losses: Vec<LossSpan>) -> String {
        let (sequence, temp) = self.begin(content);
        let (dt, hour) = partition_date(at_s);
        let key = format!(
            "cluster={}/dt={dt}/hour={hour}/{}-{}-{sequence:06}.parquet",
            self.cluster,
            self.name,
            compact_utc(at_s)
        );
        let facts = FileFacts {
            sequence,
            records: 3,
            first_record_s: at_s,
            last_record_s: at_s + 60,
            loss_records: losses,
        };
        let Commit::Spooled(_) = self.spool().commit(&temp, &key, facts).unwrap() else {
            panic!("not spooled");
        };
        key
    }

    /// Seals a digest at `now_s`; returns its key.
    pub async fn seal(&mut self, now_s: u64) -> String {
        self.sealer.seal(now_s).await.unwrap()
    }

    /// Moves everything in the spool's `ready/` into `flow_dir`, under its key.
    pub fn ship(&self, flow_dir: &Path) {
        for file in pending_in(&self.spool_dir).unwrap() {
            let to = flow_dir.join(&file.key);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&file.path, &to).unwrap();
            remove(&self.spool_dir, &file).unwrap();
        }
    }

    /// Stops cleanly and starts again at `now_s` on the same spool and key.
    pub fn restart(mut self, now_s: u64) -> Self {
        self.spool.take().unwrap().close().unwrap();
        Self::start_with(
            self.spool_dir,
            self.key_file,
            &self.cluster,
            &self.name,
            now_s,
        )
    }

    /// Dies (SIGKILL: nothing closed) and starts again at `now_s` on the same spool and key.
    pub fn kill_and_restart(mut self, now_s: u64) -> Self {
        drop(self.spool.take());
        Self::start_with(
            self.spool_dir,
            self.key_file,
            &self.cluster,
            &self.name,
            now_s,
        )
    }
}
