//! The agent's configuration: one YAML file (`tollgate agent --config FILE`, the DaemonSet's
//! ConfigMap) with two sections, `agent` and `collector` (the collector's own schema,
//! `tollgate_collector::config::CollectorConfig`), every field defaulted, unknown fields
//! refused. `TOLLGATE_NODE` (the DaemonSet sets it from `spec.nodeName`) overrides
//! `collector.node`. The lab runs on the same schema with its embedded defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tollgate_collector::config::CollectorConfig;

use crate::cni::{PrefixSource, VethNames};

/// What a new endpoint does before its rules are programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnforcementMode {
    /// Denied until programmed, and traffic of addresses that are not endpoints is denied
    /// (the default).
    #[default]
    Strict,
    /// Allowed until programmed (the VPC CNI agent's behaviour), for users who ask for it.
    Standard,
}

/// Whether traffic from the node's own addresses to a local pod passes ingress policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeIngress {
    /// It passes, with reason `from-node` in its event, as the NetworkPolicy API requires
    /// (kubelet probes, node-local agents): the default.
    #[default]
    Allow,
    /// Ingress policy decides it like any other peer's (the VPC CNI agent's strict mode): a
    /// pod under default-deny ingress fails its kubelet probes.
    Policy,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The agent's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// Strict (fail closed) or standard (fail open) start of new endpoints.
    pub enforcement: EnforcementMode,
    /// Directory under the BPF filesystem where maps and links are pinned.
    pub bpffs: PathBuf,
    /// Prefix of the VPC CNI's host-side veth names; unset (the default): the one the node's
    /// VPC CNI configuration sets ([`crate::cni`]).
    pub interface_prefix: Option<String>,
    /// The VPC CNI's configuration on the node (the chart mounts it read-only).
    pub cni_config: PathBuf,
    /// Whether the node's own traffic to its pods passes ingress policy.
    pub node_ingress: NodeIngress,
    /// Where `/metrics` (Prometheus text) is served.
    pub metrics_address: SocketAddr,
    /// Where `/healthz` and `/readyz` are served.
    pub health_address: SocketAddr,
    /// Log format.
    pub log_format: LogFormat,
    /// OTLP endpoint (`http://collector:4318`) for traces and metrics; none when empty.
    pub otlp_endpoint: String,
    /// Seconds between two reads of the policy maps that repair what differs from what the
    /// agent wrote (the agent otherwise writes by difference without reading them).
    pub drift_check_secs: u64,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            enforcement: EnforcementMode::Strict,
            bpffs: PathBuf::from("/sys/fs/bpf/tollgate"),
            interface_prefix: None,
            cni_config: PathBuf::from(crate::cni::CONFLIST),
            node_ingress: NodeIngress::Allow,
            metrics_address: SocketAddr::from(([0, 0, 0, 0], 9464)),
            health_address: SocketAddr::from(([0, 0, 0, 0], 9465)),
            log_format: LogFormat::Text,
            otlp_endpoint: String::new(),
            drift_check_secs: 300,
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent.
    pub agent: AgentSettings,
    /// The flow collector.
    pub collector: CollectorConfig,
}

/// The configuration could not be read or is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not fit the schema (the message names the field).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde's message, with the field and position.
        message: String,
    },
    /// Values that cannot work, each as `field: why`.
    #[error("{path}: {}", problems.join("; "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The problems.
        problems: Vec<String>,
    },
}

impl AgentConfig {
    /// Reads `path`, applies `node` (from `TOLLGATE_NODE`) when given, and checks the values.
    pub fn load(path: &Path, node: Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, node)
    }

    /// Parses `text` (named `path` in errors) as [`AgentConfig::load`] does.
    pub fn parse(text: &str, path: &Path, node: Option<String>) -> Result<Self, ConfigError> {
        let mut config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?
        };
        if let Some(node) = node.filter(|n| !n.is_empty()) {
            config.collector.node = node;
        }
        let mut problems: Vec<String> = config
            .collector
            .problems()
            .into_iter()
            .map(|p| format!("collector.{p}"))
            .collect();
        if !config.agent.bpffs.starts_with("/sys/fs/bpf/") {
            problems.push("agent.bpffs: must be a directory under /sys/fs/bpf/".to_owned());
        }
        if let Some(prefix) = &config.agent.interface_prefix
            && let Err(error) = VethNames::with_prefix(prefix, PrefixSource::Settings)
        {
            problems.push(error.to_string());
        }
        if config.agent.drift_check_secs == 0 {
            problems.push("agent.drift_check_secs: must be at least 1".to_owned());
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("config.yaml"), None)
    }

    #[test]
    fn an_empty_file_is_the_embedded_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.agent.enforcement, EnforcementMode::Strict);
        assert_eq!(config.agent.node_ingress, NodeIngress::Allow);
        assert_eq!(config.collector.window_secs, 60);
        assert_eq!(config.agent.drift_check_secs, 300);
    }

    #[test]
    fn node_ingress_is_allow_or_policy() {
        let strict = parse("agent: {node_ingress: policy}\n").unwrap();
        assert_eq!(strict.agent.node_ingress, NodeIngress::Policy);
        let bad = parse("agent: {node_ingress: deny}\n").unwrap_err();
        let text = bad.to_string();
        assert!(
            text.contains("node_ingress") && text.contains("allow"),
            "{text}"
        );
    }

    #[test]
    fn the_node_name_from_the_downward_api_wins() {
        let config = AgentConfig::parse(
            "collector: {node: from-file}\n",
            Path::new("c.yaml"),
            Some("ip-10-0-1-2".into()),
        )
        .unwrap();
        assert_eq!(config.collector.node, "ip-10-0-1-2");
    }

    #[test]
    fn errors_name_the_field() {
        let typo = parse("agent: {enforcment: strict}\n").unwrap_err();
        assert!(typo.to_string().contains("enforcment"), "{typo}");
        let bad = parse("agent: {bpffs: /tmp/pins}\ncollector: {window_secs: 0}\n").unwrap_err();
        let text = bad.to_string();
        assert!(text.contains("agent.bpffs"), "{text}");
        assert!(text.contains("collector.window_secs"), "{text}");
        let never = parse("agent: {drift_check_secs: 0}\n").unwrap_err();
        assert!(
            never.to_string().contains("agent.drift_check_secs"),
            "{never}"
        );
    }
}
