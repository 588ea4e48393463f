//! Which host interfaces are pods' veths on this node, as the node's VPC CNI configuration says
//! it names them.
//!
//! How the VPC CNI names a pod's host veth (`cmd/routed-eni-cni-plugin/cni.go` and
//! `pkg/sgpp`): `<prefix><11 hex digits of a hash of the pod's namespace and name>`, where the
//! prefix is
//! - `vlan` for a branch-ENI pod (security groups for pods) when the aws-node setting
//!   `POD_SECURITY_GROUP_ENFORCING_MODE` is `strict` (its default); the pod's traffic then
//!   leaves through the VLAN sub-interface `vlan.eth.<vlan id>` of the trunk ENI, which is
//!   *not* a pod's veth and is never matched (a dot after `vlan`);
//! - otherwise `AWS_VPC_K8S_CNI_VETHPREFIX` (at most 4 characters, `eni` by default), for
//!   every other pod, branch-ENI pods in `standard` mode included.
//!
//! aws-node writes both settings into the CNI configuration of the node,
//! `/etc/cni/net.d/10-aws.conflist` (the plugin of type `aws-cni`, fields `vethPrefix` and
//! `podSGEnforcingMode`), which the chart mounts read-only into the agent. [`VethNames::load`]
//! reads it: the prefix comes from, in order, the agent's own setting
//! (`agent.interface_prefix`), the conflist, the agent's environment
//! (`AWS_VPC_K8S_CNI_VETHPREFIX`, for a chart that copies aws-node's), then `eni`. A conflist
//! that cannot be read or parsed, or a prefix that the VPC CNI would refuse, is reported
//! ([`CniError`] names the file and the field) and discovery goes on with the next source,
//! down to `eni`: it never stops. That is safe in strict mode: a pod whose veth is not
//! matched is no endpoint, and its traffic, arriving at another pod's veth, is denied as an
//! unknown endpoint's.
//!
//! `vlan…` veths are matched whatever the enforcing mode: a branch-ENI pod wired in strict
//! mode keeps its `vlan` veth when the mode changes to `standard`, until it is restarted.

use std::path::{Path, PathBuf};

/// Where the VPC CNI writes its configuration on the node.
pub const CONFLIST: &str = "/etc/cni/net.d/10-aws.conflist";
/// The aws-node setting of the host veth prefix.
pub const VETH_PREFIX_ENV: &str = "AWS_VPC_K8S_CNI_VETHPREFIX";
/// The VPC CNI's default host veth prefix.
pub const DEFAULT_VETH_PREFIX: &str = "eni";
/// The host veth prefix of branch-ENI pods in strict mode.
pub const BRANCH_VETH_PREFIX: &str = "vlan";
/// The longest prefix the VPC CNI accepts (an interface name has 15 characters; the hash takes
/// 11).
pub const MAX_PREFIX_LEN: usize = 4;
/// How the VPC CNI names the VLAN sub-interfaces of the trunk ENI (`buildVlanLinkName`).
const VLAN_LINK_PREFIX: &str = "vlan.eth.";
/// The `type` of the VPC CNI's plugin in the conflist.
const PLUGIN_TYPE: &str = "aws-cni";

/// The node's VPC CNI configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The conflist could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The conflist is not JSON.
    #[error("{path}: not JSON")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde's error, with the position.
        #[source]
        source: serde_json::Error,
    },
    /// A field holds a value the VPC CNI would not accept.
    #[error("{source_name}: {field}: {message}")]
    Field {
        /// The file, or the environment variable.
        source_name: String,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Where the veth prefix in force came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixSource {
    /// `agent.interface_prefix` in the agent's settings.
    Settings,
    /// The node's conflist.
    Conflist(PathBuf),
    /// `AWS_VPC_K8S_CNI_VETHPREFIX` in the agent's environment.
    Environment,
    /// None of them: the VPC CNI's default.
    Default,
}

/// The names of the node's pod veths: the prefix in force, and `vlan…` for branch-ENI pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethNames {
    prefix: String,
    source: PrefixSource,
}

impl Default for VethNames {
    /// `eni…` and `vlan…`: the VPC CNI's defaults.
    fn default() -> Self {
        Self {
            prefix: DEFAULT_VETH_PREFIX.to_owned(),
            source: PrefixSource::Default,
        }
    }
}

impl VethNames {
    /// Pod veths named `prefix…` (and `vlan…`), the prefix checked as the VPC CNI checks it.
    pub fn with_prefix(prefix: &str, source: PrefixSource) -> Result<Self, CniError> {
        let name = match &source {
            PrefixSource::Settings => "agent settings".to_owned(),
            PrefixSource::Conflist(path) => path.display().to_string(),
            PrefixSource::Environment => "environment".to_owned(),
            PrefixSource::Default => "default".to_owned(),
        };
        let field = match &source {
            PrefixSource::Settings => "agent.interface_prefix",
            PrefixSource::Conflist(_) => "plugins[type=aws-cni].vethPrefix",
            PrefixSource::Environment | PrefixSource::Default => VETH_PREFIX_ENV,
        };
        let invalid = |message: String| CniError::Field {
            source_name: name.clone(),
            field: field.to_owned(),
            message,
        };
        if prefix.is_empty() {
            return Err(invalid("must not be empty".to_owned()));
        }
        if prefix.chars().count() > MAX_PREFIX_LEN {
            return Err(invalid(format!(
                "{prefix:?} is longer than {MAX_PREFIX_LEN} characters"
            )));
        }
        if !prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(invalid(format!(
                "{prefix:?} has characters other than letters and digits"
            )));
        }
        if prefix == BRANCH_VETH_PREFIX {
            return Err(invalid(format!(
                "{prefix:?} is the prefix of branch-ENI pods' veths"
            )));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            source,
        })
    }

    /// The names in force on this node: from `settings_prefix` (the agent's own setting), the
    /// conflist at `conflist`, the environment value `env_prefix`, or the default, the first
    /// that holds a valid prefix (see the module doc). Each source that could not be used is
    /// returned with why, for the caller to report; a conflist that does not exist is not an
    /// error (a node without the VPC CNI, or a chart without the mount).
    #[tracing::instrument(skip_all, fields(conflist = %conflist.display()))]
    pub fn load(
        settings_prefix: Option<&str>,
        conflist: &Path,
        env_prefix: Option<&str>,
    ) -> (Self, Vec<CniError>) {
        let mut problems = Vec::new();
        if let Some(prefix) = settings_prefix {
            match Self::with_prefix(prefix, PrefixSource::Settings) {
                Ok(names) => return (names, problems),
                Err(error) => problems.push(error),
            }
        }
        match read_conflist(conflist) {
            Ok(Some(prefix)) => {
                match Self::with_prefix(&prefix, PrefixSource::Conflist(conflist.to_owned())) {
                    Ok(names) => return (names, problems),
                    Err(error) => problems.push(error),
                }
            }
            Ok(None) => {}
            Err(error) => problems.push(error),
        }
        if let Some(prefix) = env_prefix.filter(|p| !p.is_empty()) {
            match Self::with_prefix(prefix, PrefixSource::Environment) {
                Ok(names) => return (names, problems),
                Err(error) => problems.push(error),
            }
        }
        (Self::default(), problems)
    }

    /// The prefix of the pods' veths other than strict-mode branch-ENI pods'.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where [`VethNames::prefix`] came from.
    pub fn source(&self) -> &PrefixSource {
        &self.source
    }

    /// Whether `ifname` is a pod's host veth: `<prefix>…`, or `vlan` followed by hex digits
    /// only (not the trunk's `vlan.eth.<id>`).
    pub fn matches(&self, ifname: &str) -> bool {
        ifname.starts_with(&self.prefix) || is_branch_veth(ifname)
    }
}

/// Whether `ifname` is a VLAN sub-interface of the trunk ENI (`vlan.eth.<vlan id>`), through
/// which the VPC CNI sends a branch ENI's traffic.
pub fn is_vlan_link(ifname: &str) -> bool {
    ifname.starts_with(VLAN_LINK_PREFIX)
}

/// Whether `ifname` is the host veth of a branch-ENI pod in strict mode: `vlan` and hex digits.
pub fn is_branch_veth(ifname: &str) -> bool {
    ifname
        .strip_prefix(BRANCH_VETH_PREFIX)
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The `vethPrefix` of the `aws-cni` plugin in the conflist at `path`: `None` when the file
/// does not exist or sets none.
fn read_conflist(path: &Path) -> Result<Option<String>, CniError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CniError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    parse_conflist(path, &text)
}

/// The `vethPrefix` of the `aws-cni` plugin in conflist `text` (read from `path`).
pub fn parse_conflist(path: &Path, text: &str) -> Result<Option<String>, CniError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|source| CniError::Parse {
            path: path.to_owned(),
            source,
        })?;
    let field = |field: &str, message: &str| CniError::Field {
        source_name: path.display().to_string(),
        field: field.to_owned(),
        message: message.to_owned(),
    };
    let plugins = value
        .get("plugins")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| field("plugins", "missing or not a list"))?;
    let Some(plugin) = plugins
        .iter()
        .find(|p| p.get("type").and_then(serde_json::Value::as_str) == Some(PLUGIN_TYPE))
    else {
        return Err(field("plugins", "no plugin of type aws-cni"));
    };
    match plugin.get("vethPrefix") {
        None => Ok(None),
        Some(serde_json::Value::String(prefix)) => Ok(Some(prefix.clone())),
        Some(_) => Err(field("plugins[type=aws-cni].vethPrefix", "not a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFLIST_TEXT: &str = r#"{
      "cniVersion": "0.4.0",
      "name": "aws-cni",
      "disableCheck": true,
      "plugins": [
        {"name": "aws-cni", "type": "aws-cni", "vethPrefix": "abc", "mtu": "9001",
         "podSGEnforcingMode": "strict", "pluginLogFile": "/var/log/aws-routed-eni/plugin.log"},
        {"name": "egress-cni", "type": "egress-cni"},
        {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
      ]
    }"#;

    fn path() -> PathBuf {
        PathBuf::from("/etc/cni/net.d/10-aws.conflist")
    }

    #[test]
    fn the_prefix_of_the_aws_cni_plugin() {
        assert_eq!(
            parse_conflist(&path(), CONFLIST_TEXT).unwrap().as_deref(),
            Some("abc")
        );
        let without = CONFLIST_TEXT.replace(r#""vethPrefix": "abc", "#, "");
        assert_eq!(parse_conflist(&path(), &without).unwrap(), None);
    }

    #[test]
    fn bad_conflists_name_the_file_and_field() {
        let not_json = parse_conflist(&path(), "{").unwrap_err().to_string();
        assert!(
            not_json.starts_with("/etc/cni/net.d/10-aws.conflist: not JSON"),
            "{not_json}"
        );
        let no_plugin = parse_conflist(&path(), r#"{"plugins": [{"type": "bridge"}]}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(
            no_plugin,
            "/etc/cni/net.d/10-aws.conflist: plugins: no plugin of type aws-cni"
        );
        let number = parse_conflist(
            &path(),
            r#"{"plugins": [{"type": "aws-cni", "vethPrefix": 7}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(number.contains("plugins[type=aws-cni].vethPrefix: not a string"));
    }

    #[test]
    fn prefixes_are_checked_as_the_vpc_cni_checks_them() {
        let conflist = PrefixSource::Conflist(path());
        assert!(VethNames::with_prefix("veth", conflist.clone()).is_ok());
        let long = VethNames::with_prefix("toolong", conflist.clone())
            .unwrap_err()
            .to_string();
        assert_eq!(
            long,
            "/etc/cni/net.d/10-aws.conflist: plugins[type=aws-cni].vethPrefix: \"toolong\" is \
             longer than 4 characters"
        );
        for bad in ["", "vlan", "e.n", "e-n"] {
            assert!(
                VethNames::with_prefix(bad, conflist.clone()).is_err(),
                "{bad}"
            );
        }
        let env = VethNames::with_prefix("abcde", PrefixSource::Environment)
            .unwrap_err()
            .to_string();
        assert!(
            env.starts_with("environment: AWS_VPC_K8S_CNI_VETHPREFIX: "),
            "{env}"
        );
    }

    #[test]
    fn pod_veths_and_not_the_trunk_vlans() {
        let names = VethNames::default();
        for (ifname, pod) in [
            ("eni1a2b3c4d5e6", true),
            ("vlan1a2b3c4d5e6", true),
            ("vlan.eth.1", false),
            ("vlan.eth.12", false),
            ("vlan", false),
            ("vlanxyz", false),
            ("eth0", false),
            ("veth1a2b3c4d5e", false),
        ] {
            assert_eq!(names.matches(ifname), pod, "{ifname}");
        }
        assert!(is_vlan_link("vlan.eth.1") && !is_vlan_link("vlan0a1b2c3d4e5"));
    }

    #[test]
    fn the_first_valid_source_wins_and_the_others_are_reported() {
        let scratch = tollgate_test_support::temp_dir("cni");
        let dir = scratch.path();
        let good = dir.join("good.conflist");
        std::fs::write(&good, CONFLIST_TEXT).unwrap();
        let bad = dir.join("bad.conflist");
        std::fs::write(&bad, "not json").unwrap();
        let long = dir.join("long.conflist");
        std::fs::write(&long, CONFLIST_TEXT.replace("\"abc\"", "\"abcdef\"")).unwrap();
        let missing = dir.join("missing.conflist");

        let (names, problems) = VethNames::load(Some("set"), &good, Some("env"));
        assert_eq!((names.prefix(), problems.len()), ("set", 0));
        assert_eq!(names.source(), &PrefixSource::Settings);
        let (names, problems) = VethNames::load(None, &good, Some("env"));
        assert_eq!((names.prefix(), problems.len()), ("abc", 0));
        let (names, problems) = VethNames::load(None, &missing, Some("env"));
        assert_eq!((names.prefix(), problems.len()), ("env", 0));
        let (names, problems) = VethNames::load(None, &bad, None);
        assert_eq!(names, VethNames::default());
        assert!(problems[0].to_string().contains("bad.conflist: not JSON"));
        let (names, problems) = VethNames::load(None, &long, Some("abcdefg"));
        assert_eq!(names.prefix(), DEFAULT_VETH_PREFIX);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0]
                .to_string()
                .contains("long.conflist: plugins[type=aws-cni].vethPrefix")
        );
    }
}
