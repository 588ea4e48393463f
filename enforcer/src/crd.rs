//! The cluster-scoped policy resources the compiler reads besides NetworkPolicy, as custom
//! resources: SIG Network's ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`,
//! network-policy-api v0.2.0) and AWS's (`networking.k8s.aws/v1alpha1`, the VPC CNI's), which
//! has the same tiers and rules but names its ports another way.
//!
//! Each is its metadata and its `spec` as given, unchecked: `compile` reads the spec field by
//! field, because a field it does not know must make a rule fail closed (as the API says),
//! where a typed decoder would drop it without a word. Both implement k8s-openapi's
//! `Resource`, so kube-rs lists, watches and creates them like the built-in kinds; they
//! serialize with their `apiVersion` and `kind`, as the API server takes them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::ser::{Serialize, SerializeStruct, Serializer};

/// The API groups of [`ClusterNetworkPolicy`] and [`AwsClusterNetworkPolicy`] (the rule names
/// of `tollgate_schemas::rule` tell the two apart by them).
pub use tollgate_schemas::rule::{AWS_CLUSTER_NETWORK_POLICY_GROUP, CLUSTER_NETWORK_POLICY_GROUP};

/// A `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ClusterNetworkPolicy {
    /// Standard object metadata (cluster-scoped: no namespace).
    pub metadata: ObjectMeta,
    /// `spec`, as given.
    #[serde(default)]
    pub spec: serde_json::Value,
}

/// A `networking.k8s.aws/v1alpha1` ClusterNetworkPolicy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct AwsClusterNetworkPolicy {
    /// Standard object metadata (cluster-scoped: no namespace).
    pub metadata: ObjectMeta,
    /// `spec`, as given.
    #[serde(default)]
    pub spec: serde_json::Value,
}

macro_rules! cluster_resource {
    ($type:ident, $group:expr, $version:literal) => {
        impl k8s_openapi::Resource for $type {
            const API_VERSION: &'static str = concat!($group, "/", $version);
            const GROUP: &'static str = $group;
            const KIND: &'static str = "ClusterNetworkPolicy";
            const VERSION: &'static str = $version;
            const URL_PATH_SEGMENT: &'static str = "clusternetworkpolicies";
            type Scope = k8s_openapi::ClusterResourceScope;
        }

        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use k8s_openapi::Resource as _;
                let mut object = serializer.serialize_struct(stringify!($type), 4)?;
                object.serialize_field("apiVersion", Self::API_VERSION)?;
                object.serialize_field("kind", Self::KIND)?;
                object.serialize_field("metadata", &self.metadata)?;
                object.serialize_field("spec", &self.spec)?;
                object.end()
            }
        }

        impl k8s_openapi::ListableResource for $type {
            const LIST_KIND: &'static str = "ClusterNetworkPolicyList";
        }

        impl k8s_openapi::Metadata for $type {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

cluster_resource!(ClusterNetworkPolicy, "policy.networking.k8s.io", "v1alpha2");
cluster_resource!(AwsClusterNetworkPolicy, "networking.k8s.aws", "v1alpha1");

#[cfg(test)]
mod tests {
    use k8s_openapi::Resource;

    use super::*;

    #[test]
    fn the_groups_are_the_resources_own() {
        assert_eq!(ClusterNetworkPolicy::GROUP, CLUSTER_NETWORK_POLICY_GROUP);
        assert_eq!(
            AwsClusterNetworkPolicy::GROUP,
            AWS_CLUSTER_NETWORK_POLICY_GROUP
        );
        assert_eq!(
            ClusterNetworkPolicy::API_VERSION,
            "policy.networking.k8s.io/v1alpha2"
        );
        assert_eq!(
            AwsClusterNetworkPolicy::API_VERSION,
            "networking.k8s.aws/v1alpha1"
        );
    }

    #[test]
    fn a_policy_serializes_as_the_api_server_takes_it() {
        let policy: ClusterNetworkPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "a"},
            "spec": {"tier": "Admin"},
            "status": {"conditions": []},
        }))
        .unwrap();
        assert_eq!(
            serde_json::to_value(&policy).unwrap(),
            serde_json::json!({
                "apiVersion": "policy.networking.k8s.io/v1alpha2",
                "kind": "ClusterNetworkPolicy",
                "metadata": {"name": "a"},
                "spec": {"tier": "Admin"},
            })
        );
    }
}
