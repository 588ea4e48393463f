//! The pods' servers: Debian's nginx and apache2 as the nginx and httpd images, dnsmasq as
//! kube-dns, each a process inside its pod's network namespace.
//!
//! [`Servers::start`] writes each server's configuration into the pod's directory under the
//! run's directory (`<run dir>/<namespace>-<pod>/`: configuration, pid file, access and error
//! logs, the document root), starts it in the foreground through `ip netns exec <pod netns>`
//! (so it sees only the pod's interfaces and the pod's `resolv.conf`), listening on the pod's
//! address alone, and waits until `ss` in the pod's namespace shows it listening. nginx serves
//! its own default page, apache2 the httpd image's `It works!`, dnsmasq answers
//! `<service>.<namespace>.svc.cluster.local` with the Service's ClusterIP (A or AAAA) and
//! NXDOMAIN for every other name under `cluster.local`, and forwards nothing.
//!
//! Each process is a guard: dropping [`Servers`] (the walk ending, failing, or dropped on a
//! signal or the time limit) sends each SIGTERM, waits for it to exit (SIGKILL after
//! [`STOP_WITHIN`]), then removes the run's directory. [`sweep_stale`] stops the servers of
//! runs that were killed before they could, by their pid files.

use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{
    LabError,
    names::{self, RUN_DIR_SUFFIX},
    pods::{HTTPD_INDEX, HttpServer, LabPod, LabPods, Serves},
    topology::{Topology, is_stale},
};
use tollgate_enforcer::causes::Causes;

/// Longest a server may take to listen after it was started.
pub const LISTEN_WITHIN: Duration = Duration::from_secs(10);
/// Longest a server may take to exit after SIGTERM before it is killed.
pub const STOP_WITHIN: Duration = Duration::from_secs(3);
/// How often readiness and exit are polled.
const POLL: Duration = Duration::from_millis(20);
/// Debian's apache2 modules.
const APACHE_MODULES: &str = "/usr/lib/apache2/modules";
/// nginx's own default page, as Debian installs it.
const NGINX_HTML: &str = "/usr/share/nginx/html";

/// One server process in a pod; dropping it stops it.
#[derive(Debug)]
struct Process {
    /// `namespace/pod program`, for logs.
    what: String,
    child: Child,
}

impl Process {
    /// Sends SIGTERM, waits up to [`STOP_WITHIN`], then kills.
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // Our own child, not yet reaped: its pid is still its own.
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + STOP_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                tracing::debug!(server = %self.what, %status, "server stopped");
                return;
            }
            std::thread::sleep(POLL);
        }
        tracing::warn!(server = %self.what, "server did not stop on SIGTERM; killed");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The running servers of every pod; dropping it stops them and removes the run's directory.
#[derive(Debug)]
pub struct Servers {
    processes: Vec<Process>,
    dir: PathBuf,
}

impl Servers {
    /// Starts every server of every pod of `pods`, each in its pod's namespace, and waits until
    /// each listens. On error, what was started is stopped.
    #[tracing::instrument(skip_all, fields(run = %topology.names().prefix()))]
    pub async fn start(topology: &Topology, pods: &LabPods) -> Result<Self, LabError> {
        let dir = topology.names().run_dir();
        std::fs::create_dir_all(&dir).map_err(|source| LabError::File {
            path: dir.clone(),
            what: "creating",
            source,
        })?;
        let mut servers = Self {
            processes: Vec::new(),
            dir,
        };
        for pod in &pods.pods {
            let link = topology
                .link(&pod.key())
                .ok_or_else(|| LabError::Scenario(format!("pod {} is not wired", pod.key())))?;
            let pod_dir = servers.pod_dir(pod);
            for serves in &pod.serves {
                let addr = SocketAddr::new(pod.ip, serves.port());
                let (program, args) = configure(&pod_dir, pod, serves, addr, pods)?;
                let process = spawn(&link.netns, &pod_dir, program, &args, pod)?;
                servers.processes.push(process);
                let netns = link.netns.clone();
                let tcp = !matches!(serves, Serves::Dns { .. });
                let ready = tokio::task::spawn_blocking(move || wait_listening(&netns, addr, tcp))
                    .await
                    .map_err(|error| LabError::Scenario(error.to_string()))?;
                if !ready {
                    let log =
                        std::fs::read_to_string(pod_dir.join("stderr.log")).unwrap_or_default();
                    return Err(LabError::Scenario(format!(
                        "{program} in pod {} is not listening on {addr} after {LISTEN_WITHIN:?}: {}",
                        pod.key(),
                        log.trim()
                    )));
                }
                tracing::info!(pod = %pod.key(), program, %addr, "server listening");
            }
        }
        Ok(servers)
    }

    /// The directory of `pod`'s files.
    pub fn pod_dir(&self, pod: &LabPod) -> PathBuf {
        self.dir.join(format!("{}-{}", pod.namespace, pod.name))
    }

    /// The access log of `pod`'s HTTP server (empty when it has none or logged nothing).
    pub fn access_log(&self, pod: &LabPod) -> String {
        std::fs::read_to_string(self.pod_dir(pod).join("access.log")).unwrap_or_default()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for process in &mut self.processes {
            process.stop();
        }
        self.processes.clear();
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %Causes(&error), "run directory not removed");
        }
    }
}

/// Writes the configuration of what `pod` `serves` on `addr` into `dir`; the program to run
/// and its arguments.
fn configure(
    dir: &Path,
    pod: &LabPod,
    serves: &Serves,
    addr: SocketAddr,
    pods: &LabPods,
) -> Result<(&'static str, Vec<String>), LabError> {
    let d = dir.display();
    let (program, file, config, args) = match serves {
        Serves::Http {
            server: HttpServer::Nginx,
            ..
        } => (
            "nginx",
            "nginx.conf",
            format!(
                "daemon off;\nworker_processes 1;\nuser www-data;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log notice;\nevents {{ worker_connections 64; }}\n\
                 http {{\n  include /etc/nginx/mime.types;\n  access_log {d}/access.log;\n  \
                 client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n  \
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
                 scgi_temp_path {d}/scgi;\n  server {{\n    listen {addr};\n    \
                 root {NGINX_HTML};\n    index index.html;\n  }}\n}}\n"
            ),
            vec![
                "-e".to_owned(),
                format!("{d}/error.log"),
                "-p".to_owned(),
                format!("{d}/"),
                "-c".to_owned(),
                format!("{d}/nginx.conf"),
            ],
        ),
        Serves::Http {
            server: HttpServer::Apache,
            ..
        } => {
            let htdocs = dir.join("htdocs");
            write(&htdocs.join("index.html"), HTTPD_INDEX)?;
            let mut config = String::new();
            for (module, file) in [
                ("mpm_event_module", "mod_mpm_event.so"),
                ("authz_core_module", "mod_authz_core.so"),
                ("dir_module", "mod_dir.so"),
                ("mime_module", "mod_mime.so"),
            ] {
                let _ = writeln!(config, "LoadModule {module} {APACHE_MODULES}/{file}");
            }
            let _ = write!(
                config,
                "ServerName {name}\nListen {addr}\nUser www-data\nGroup www-data\n\
                 DefaultRuntimeDir {d}\nPidFile {d}/apache2.pid\nErrorLog {d}/error.log\n\
                 LogFormat \"%h %l %u %t \\\"%r\\\" %>s %b\" common\n\
                 CustomLog {d}/access.log common\nTypesConfig /etc/mime.types\n\
                 DocumentRoot {d}/htdocs\n<Directory {d}/htdocs>\n  Require all granted\n\
                 </Directory>\nDirectoryIndex index.html\n",
                name = pod.name
            );
            (
                "apache2",
                "apache2.conf",
                config,
                vec![
                    "-d".to_owned(),
                    format!("{d}"),
                    "-f".to_owned(),
                    format!("{d}/apache2.conf"),
                    "-DFOREGROUND".to_owned(),
                ],
            )
        }
        Serves::Dns { port } => {
            let mut config = format!(
                "port={port}\nlisten-address={ip}\nbind-interfaces\nno-resolv\nno-hosts\n\
                 local=/{domain}/\nlocal-ttl=5\npid-file={d}/dnsmasq.pid\nlog-queries\n\
                 log-facility={d}/access.log\n",
                ip = addr.ip(),
                domain = crate::pods::CLUSTER_DOMAIN
            );
            for name in &pods.names {
                let _ = writeln!(config, "host-record={},{}", name.fqdn, name.cluster_ip);
            }
            (
                "dnsmasq",
                "dnsmasq.conf",
                config,
                vec![
                    "--keep-in-foreground".to_owned(),
                    format!("--conf-file={d}/dnsmasq.conf"),
                ],
            )
        }
    };
    write(&dir.join(file), &config)?;
    Ok((program, args))
}

fn write(path: &Path, text: &str) -> Result<(), LabError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| LabError::File {
            path: parent.to_owned(),
            what: "creating",
            source,
        })?;
    }
    std::fs::write(path, text).map_err(|source| LabError::File {
        path: path.to_owned(),
        what: "writing",
        source,
    })
}

/// Starts `program ARGS` in `netns`, in a process group of its own (a Ctrl-C at the terminal
/// reaches the lab, which stops the servers in order), its output in `dir/stderr.log`.
fn spawn(
    netns: &str,
    dir: &Path,
    program: &'static str,
    args: &[String],
    pod: &LabPod,
) -> Result<Process, LabError> {
    let log_path = dir.join("stderr.log");
    let log = File::create(&log_path).map_err(|source| LabError::File {
        path: log_path.clone(),
        what: "creating",
        source,
    })?;
    let log2 = log.try_clone().map_err(|source| LabError::File {
        path: log_path,
        what: "opening",
        source,
    })?;
    let child = Command::new("ip")
        .args(["netns", "exec", netns, program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|error| LabError::Command {
            command: format!("ip netns exec {netns} {program}"),
            message: error.to_string(),
        })?;
    tracing::debug!(pod = %pod.key(), program, pid = child.id(), "server started");
    Ok(Process {
        what: format!("{} {program}", pod.key()),
        child,
    })
}

/// Waits until a socket of `netns` listens on `addr` (TCP, or UDP when `tcp` is false).
pub(crate) fn wait_listening(netns: &str, addr: SocketAddr, tcp: bool) -> bool {
    let deadline = Instant::now() + LISTEN_WITHIN;
    let wanted = addr.to_string();
    while Instant::now() < deadline {
        let output = Command::new("ip")
            .args(["netns", "exec", netns, "ss", "-Hln"])
            .arg(if tcp { "-t" } else { "-u" })
            .output();
        if let Ok(output) = output
            && String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .any(|field| field == wanted)
        {
            return true;
        }
        std::thread::sleep(POLL);
    }
    false
}

/// Stops the servers of lab runs whose process is gone (killed before it could stop them)
/// and that are older than [`STALE_AFTER`](crate::topology::STALE_AFTER), by the pid files in their run directories, and
/// removes those directories; returns them.
pub fn sweep_stale() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Some(pid) = name
            .strip_suffix(RUN_DIR_SUFFIX)
            .and_then(|run| names::creator_pid(&format!("{run}-")))
        else {
            continue;
        };
        if !is_stale(pid, &entry.path()) {
            continue;
        }
        let dir = entry.path();
        for pod in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            for file in ["nginx.pid", "apache2.pid", "dnsmasq.pid"] {
                let server = std::fs::read_to_string(pod.path().join(file))
                    .ok()
                    .and_then(|text| text.trim().parse::<libc::pid_t>().ok());
                let program = file.trim_end_matches(".pid");
                let Some(server) = server else {
                    continue;
                };
                let comm = std::fs::read_to_string(format!("/proc/{server}/comm"));
                if comm.is_ok_and(|comm| comm.trim() == program)
                    && let Some(pid) = rustix::process::Pid::from_raw(server)
                {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                    tracing::info!(pid = server, program, "stale lab server stopped");
                }
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => removed.push(dir),
            Err(error) => {
                tracing::warn!(dir = %dir.display(), error = %Causes(&error), "stale run directory kept")
            }
        }
    }
    removed
}
