//! Incident response on the flow log: isolate a pod, and prove what it did.
//!
//! Data flows through the modules in this order:
//! - [`quarantine`]: a pod cut off (or released) through a [`cluster::Cluster`] — the
//!   Kubernetes API, or the lab's objects — with one label and one Admin-tier
//!   ClusterNetworkPolicy that denies it every peer;
//!   the act becomes an isolation record;
//! - [`record`]: that record written into the flow log ([`location::FlowLogLocation`]: a local
//!   directory or an S3 prefix), in the collector's layout, as one Parquet file;
//! - [`evidence`]: a pod's records in a time window read back from the flow log
//!   ([`source`]: local files, or S3 objects with their ETags and versions), written as a
//!   bundle with a manifest of SHA-256 digests, and verified again later;
//! - [`legal_hold`]: S3 Object Lock legal holds on what a quarantine or a bundle covers,
//!   lifted only by `evidence release-hold`;
//! - [`provenance`]: the signed digests that list a bundle's sources, carried in the bundle
//!   and checked by `evidence verify`;
//! - [`digest_verify`]: the flow log checked against the collectors' signed digest chains
//!   (`tollgate digest verify`);
//! - [`athena`]: one Athena query naming the S3 objects that hold a pod's records, read alone.

pub mod athena;
pub mod cluster;
pub mod digest_verify;
pub mod evidence;
pub mod legal_hold;
pub mod location;
pub mod provenance;
pub mod quarantine;
pub mod record;
pub mod source;

/// A pod named on the command line as `NAMESPACE/POD`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for PodRef {
    type Err = String;

    /// `NAMESPACE/POD`: a namespace (DNS label) and a pod name (DNS subdomain).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (namespace, name) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?}: expected NAMESPACE/POD"))?;
        if !is_dns_label(namespace) {
            return Err(format!(
                "{text:?}: namespace {namespace:?} is not a DNS label (a-z, 0-9, '-', at most 63)"
            ));
        }
        if name.len() > 253 || !name.split('.').all(is_dns_label) {
            return Err(format!(
                "{text:?}: pod name {name:?} is not a DNS subdomain (a-z, 0-9, '-', '.', at most \
                 253)"
            ));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::PodRef;

    #[test]
    fn pod_refs_parse_and_refuse() {
        let pod: PodRef = "default/amazonlinux".parse().unwrap();
        assert_eq!(pod.to_string(), "default/amazonlinux");
        assert!("web-7c5d.abc".parse::<PodRef>().is_err());
        assert!("default/".parse::<PodRef>().is_err());
        assert!("Default/x".parse::<PodRef>().is_err());
        assert!("default/x_y".parse::<PodRef>().is_err());
        assert!("default/a..b".parse::<PodRef>().is_err());
        assert!("a/b/c".parse::<PodRef>().is_err());
        assert!(
            "kube-system/coredns-5d78c9869d-x2x7q"
                .parse::<PodRef>()
                .is_ok()
        );
    }
}
