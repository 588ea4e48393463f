//! Kubernetes YAML → [`Snapshot`] plus an [`InputError`] for every object that cannot be read.
//!
//! Data flows through this module in four steps:
//! 1. The bytes are split into YAML documents at `---` lines, so a broken document costs only
//!    itself (documents are numbered from 1, as `SOURCE document N` in errors). A UTF-8
//!    byte-order mark at the start of the file or of a document is dropped, as YAML allows;
//!    a document that is not valid UTF-8 is an error of its own, naming the line and column of
//!    its first invalid byte, and the other documents are still read.
//! 2. Each document is parsed into a generic YAML value; `kind: List` and `*List` documents
//!    (what `kubectl get -o yaml` prints) are flattened into their `items`.
//! 3. Each object's `kind` decides what happens to it: Namespace, Pod, NetworkPolicy, Service,
//!    EndpointSlice, Node and ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`, or AWS's
//!    `networking.k8s.aws/v1alpha1`) are checked for their `apiVersion` and `metadata.name`;
//!    every other kind is ignored.
//! 4. The object is decoded into its k8s-openapi type (or `crate::crd`'s) and added to the
//!    [`Snapshot`]. Field
//!    values (CIDRs, ports, selectors) are checked later, by [`crate::compile`], which sees
//!    snapshots from every source.

use k8s_openapi::Resource;
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use serde_yaml_ng::Value;

use crate::crd::{AwsClusterNetworkPolicy, ClusterNetworkPolicy};
use crate::snapshot::{InputError, Snapshot};

/// The namespace of a namespaced object whose `metadata.namespace` is absent, as `kubectl
/// apply` assumes without a context namespace.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Multi-document YAML as `kubectl get -o yaml` prints it; `kind: List` (and `*List`) items are
/// flattened; kinds other than Namespace, Pod, NetworkPolicy, Service, EndpointSlice, Node and
/// ClusterNetworkPolicy are ignored without error.
pub fn parse_manifests(text: &str, source: &str) -> (Snapshot, Vec<InputError>) {
    parse_manifest_bytes(text.as_bytes(), source)
}

/// [`parse_manifests`] of a file's bytes, as read: a document that is not valid UTF-8 costs
/// only itself (see the module doc).
pub fn parse_manifest_bytes(bytes: &[u8], source: &str) -> (Snapshot, Vec<InputError>) {
    let mut parser = Parser {
        snapshot: Snapshot::default(),
        errors: Vec::new(),
    };
    for document in split_documents(bytes) {
        let label = format!("{source} document {}", document.number);
        let text = match std::str::from_utf8(document.bytes) {
            Ok(text) => text,
            Err(e) => {
                parser.error(
                    &label,
                    "(document)",
                    invalid_utf8_message(document.bytes, &e, document.first_line),
                );
                continue;
            }
        };
        match serde_yaml_ng::from_str::<Value>(text) {
            Ok(Value::Null) => {}
            Ok(value) => parser.object(value, &label, None),
            Err(e) => parser.errors.push(InputError {
                object: label,
                field: "(document)".to_owned(),
                message: yaml_error_message(&e, document.first_line),
            }),
        }
    }
    (parser.snapshot, parser.errors)
}

/// One YAML document of a multi-document text.
struct Document<'a> {
    /// 1-based number among the file's documents.
    number: usize,
    /// 1-based line of the file where the document's text starts.
    first_line: usize,
    /// The document's bytes, without a leading byte-order mark.
    bytes: &'a [u8],
}

/// The UTF-8 byte-order mark.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// Splits at document start markers (`---` alone or followed by a blank, after an optional
/// byte-order mark). The text before the first marker is a document only if it holds more than
/// blank and comment lines. Works on bytes, so invalid UTF-8 stays inside its own document.
fn split_documents(bytes: &[u8]) -> Vec<Document<'_>> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut first_line = 1;
    let mut offset = 0;
    for (index, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
        let bom = if line.starts_with(BOM) { BOM.len() } else { 0 };
        let content = line[bom..].trim_ascii_end();
        let is_marker = content == b"---"
            || line[bom..].starts_with(b"--- ")
            || line[bom..].starts_with(b"---\t");
        if is_marker {
            documents.push((first_line, &bytes[start..offset]));
            // Anything after the marker on its line belongs to the new document.
            start = offset + bom + 3;
            first_line = index + 1;
        }
        offset += line.len();
    }
    documents.push((first_line, &bytes[start..]));
    let leading_is_empty = documents.len() > 1
        && documents[0].1.split(|b| *b == b'\n').all(|line| {
            let line = line.strip_prefix(BOM).unwrap_or(line).trim_ascii();
            line.is_empty() || line.starts_with(b"#")
        });
    documents
        .into_iter()
        .skip(usize::from(leading_is_empty))
        .enumerate()
        .map(|(index, (first_line, bytes))| Document {
            number: index + 1,
            first_line,
            bytes: bytes.strip_prefix(BOM).unwrap_or(bytes),
        })
        .collect()
}

/// Where in the file a document's first invalid UTF-8 sequence is, and its bytes.
fn invalid_utf8_message(bytes: &[u8], error: &std::str::Utf8Error, first_line: usize) -> String {
    let valid = &bytes[..error.valid_up_to()];
    let line = first_line + valid.iter().filter(|b| **b == b'\n').count();
    let line_start = valid
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |at| at + 1);
    let column = valid.len() - line_start + 1;
    let end = error
        .error_len()
        .map_or(bytes.len(), |len| error.valid_up_to() + len);
    let invalid: Vec<String> = bytes[error.valid_up_to()..end]
        .iter()
        .map(|b| format!("0x{b:02x}"))
        .collect();
    format!(
        "invalid UTF-8 at line {line} column {column} (byte {}): the document is left out",
        invalid.join(" ")
    )
}

/// The parser's message with the location counted in lines of the whole file.
fn yaml_error_message(error: &serde_yaml_ng::Error, first_line: usize) -> String {
    let message = error.to_string();
    match error.location() {
        Some(location) => {
            let bare = message
                .rfind(" at line ")
                .map_or(message.as_str(), |at| &message[..at]);
            format!(
                "invalid YAML at line {} column {}: {bare}",
                first_line + location.line() - 1,
                location.column()
            )
        }
        None => format!("invalid YAML: {message}"),
    }
}

struct Parser {
    snapshot: Snapshot,
    errors: Vec<InputError>,
}

/// `kind` and `apiVersion` an item of a typed list (`PodList`) has when it does not say.
struct ListDefaults<'a> {
    kind: &'a str,
    api_version: Option<&'a str>,
}

impl Parser {
    fn error(&mut self, object: &str, field: &str, message: impl Into<String>) {
        self.errors.push(InputError {
            object: object.to_owned(),
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// One object (or list) found at `label`.
    fn object(&mut self, value: Value, label: &str, defaults: Option<&ListDefaults<'_>>) {
        if !value.is_mapping() {
            self.error(
                label,
                "(document)",
                "expected a Kubernetes object (a mapping with kind and apiVersion)",
            );
            return;
        }
        let kind = match (str_field(&value, "kind"), defaults) {
            (Some(kind), _) => kind.to_owned(),
            (None, Some(defaults)) => defaults.kind.to_owned(),
            (None, None) => {
                self.error(label, "kind", "missing");
                return;
            }
        };
        let api_version = str_field(&value, "apiVersion")
            .or_else(|| defaults.and_then(|d| d.api_version))
            .map(str::to_owned);
        if kind.ends_with("List") {
            self.list(&value, &kind, api_version.as_deref(), label);
            return;
        }
        let expected = match kind.as_str() {
            "Namespace" | "Pod" | "Service" | "Node" => "v1",
            "NetworkPolicy" => "networking.k8s.io/v1",
            "EndpointSlice" => "discovery.k8s.io/v1",
            // Two APIs name this kind: AWS's is read too (see `crate::crd`).
            "ClusterNetworkPolicy" => match api_version.as_deref() {
                Some(AwsClusterNetworkPolicy::API_VERSION) => AwsClusterNetworkPolicy::API_VERSION,
                _ => ClusterNetworkPolicy::API_VERSION,
            },
            _ => {
                tracing::debug!(kind = %kind, object = %label, "ignoring object of another kind");
                return;
            }
        };
        let name = match value.get("metadata").and_then(|meta| meta.get("name")) {
            Some(Value::String(name)) if !name.is_empty() => name.as_str(),
            None | Some(Value::Null) | Some(Value::String(_)) => {
                self.error(
                    label,
                    "metadata.name",
                    format!("missing: a {kind} needs a name"),
                );
                return;
            }
            Some(_) => {
                self.error(label, "metadata.name", "must be a string");
                return;
            }
        };
        let object = if kind == "Namespace" || kind == "Node" {
            format!("{kind} {name}")
        } else if kind == "ClusterNetworkPolicy" {
            match expected {
                AwsClusterNetworkPolicy::API_VERSION => {
                    format!(
                        "ClusterNetworkPolicy ({}) {name}",
                        AwsClusterNetworkPolicy::GROUP
                    )
                }
                _ => format!("ClusterNetworkPolicy {name}"),
            }
        } else {
            let namespace = value
                .get("metadata")
                .and_then(|meta| str_field(meta, "namespace"))
                .unwrap_or(DEFAULT_NAMESPACE);
            format!("{kind} {namespace}/{name}")
        };
        match api_version.as_deref() {
            Some(version) if version == expected => {}
            Some(version) => {
                self.error(
                    &object,
                    "apiVersion",
                    format!("unknown apiVersion {version:?} for kind {kind} (expected {expected})"),
                );
                return;
            }
            None => {
                self.error(
                    &object,
                    "apiVersion",
                    format!("missing (expected {expected})"),
                );
                return;
            }
        }
        match kind.as_str() {
            "Namespace" => {
                if let Some(namespace) = self.decode::<Namespace>(&value, &object) {
                    self.snapshot.namespaces.push(namespace);
                }
            }
            "Pod" => {
                if let Some(pod) = self.decode::<Pod>(&value, &object) {
                    self.snapshot.pods.push(pod);
                }
            }
            "Service" => {
                if let Some(service) = self.decode::<Service>(&value, &object) {
                    self.snapshot.services.push(service);
                }
            }
            "EndpointSlice" => {
                if let Some(slice) = self.decode::<EndpointSlice>(&value, &object) {
                    self.snapshot.endpoint_slices.push(slice);
                }
            }
            "Node" => {
                if let Some(node) = self.decode::<Node>(&value, &object) {
                    self.snapshot.nodes.push(node);
                }
            }
            "ClusterNetworkPolicy" if expected == AwsClusterNetworkPolicy::API_VERSION => {
                if let Some(policy) = self.decode::<AwsClusterNetworkPolicy>(&value, &object) {
                    self.snapshot.aws_cluster_policies.push(policy);
                }
            }
            "ClusterNetworkPolicy" => {
                if let Some(policy) = self.decode::<ClusterNetworkPolicy>(&value, &object) {
                    self.snapshot.cluster_policies.push(policy);
                }
            }
            _ => {
                if let Some(policy) = self.decode::<NetworkPolicy>(&value, &object) {
                    self.snapshot.policies.push(policy);
                }
            }
        }
    }

    fn list(&mut self, value: &Value, kind: &str, api_version: Option<&str>, label: &str) {
        let items = match value.get("items") {
            None | Some(Value::Null) => return,
            Some(Value::Sequence(items)) => items,
            Some(_) => {
                self.error(label, "items", format!("a {kind} needs a list of items"));
                return;
            }
        };
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
        for (index, item) in items.iter().enumerate() {
            let item_label = format!("{label} items[{index}]");
            let defaults = item_kind.map(|kind| ListDefaults { kind, api_version });
            self.object(item.clone(), &item_label, defaults.as_ref());
        }
    }

    /// Decodes an object into its k8s-openapi type; a wrong field type is reported with the
    /// field's path.
    fn decode<T: serde::de::DeserializeOwned>(&mut self, value: &Value, object: &str) -> Option<T> {
        // Decoding from text (rather than from the value) is what makes serde_yaml_ng report the
        // path of the offending field.
        let decoded =
            serde_yaml_ng::to_string(value).and_then(|text| serde_yaml_ng::from_str::<T>(&text));
        match decoded {
            Ok(decoded) => Some(decoded),
            Err(e) => {
                let message = e.to_string();
                // The location refers to the re-encoded text, not the input: leave it out.
                let message = message
                    .rfind(" at line ")
                    .map_or(message.as_str(), |at| &message[..at]);
                let (field, message) = match message.split_once(": ") {
                    Some((path, rest)) if !path.contains(' ') => (path, rest),
                    _ => ("(object)", message),
                };
                self.error(object, field, message);
                None
            }
        }
    }
}

fn str_field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(snapshot: &Snapshot) -> Vec<String> {
        let meta = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.name.clone().unwrap_or_default()
        };
        snapshot
            .namespaces
            .iter()
            .map(|n| format!("Namespace {}", meta(&n.metadata)))
            .chain(
                snapshot
                    .pods
                    .iter()
                    .map(|p| format!("Pod {}", meta(&p.metadata))),
            )
            .chain(
                snapshot
                    .policies
                    .iter()
                    .map(|p| format!("NetworkPolicy {}", meta(&p.metadata))),
            )
            .collect()
    }

    #[test]
    fn documents_lists_and_other_kinds() {
        let text = "\
---
apiVersion: v1
kind: Namespace
metadata:
  name: kube-system
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: nginx
    namespace: default
  spec:
    containers:
    - name: nginx
      image: nginx
- apiVersion: v1
  kind: Service
  metadata:
    name: nginx
---
# only a comment
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicyList
items:
- metadata:
    name: all-deny
    namespace: default
  spec:
    podSelector: {}
";
        let (snapshot, errors) = parse_manifests(text, "a.yaml");
        assert_eq!(errors, vec![]);
        assert_eq!(
            names(&snapshot),
            [
                "Namespace kube-system",
                "Pod nginx",
                "NetworkPolicy all-deny"
            ]
        );
    }

    #[test]
    fn a_bad_document_costs_only_itself() {
        let text = "\
apiVersion: v1
kind: Pod
metadata: {name: a}
---
apiVersion: v1
kind: Pod
metadata: {name: [
---
apiVersion: v1
kind: Pod
metadata: {name: c}
";
        let (snapshot, errors) = parse_manifests(text, "pods.yaml");
        assert_eq!(names(&snapshot), ["Pod a", "Pod c"]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].object, "pods.yaml document 2");
        assert_eq!(errors[0].field, "(document)");
        assert!(
            errors[0]
                .message
                .starts_with("invalid YAML at line 8 column 1"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn object_errors_name_object_and_field() {
        let text = "\
apiVersion: networking.k8s.io/v1beta1
kind: NetworkPolicy
metadata: {name: old, namespace: x}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: typed, namespace: x}
spec:
  ingress:
  - ports:
    - port: [80]
---
kind: Pod
metadata: {name: noversion}
---
- just
- a list
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: good, namespace: x}
";
        let (snapshot, errors) = parse_manifests(text, "np.yaml");
        assert_eq!(names(&snapshot), ["NetworkPolicy good"]);
        let got: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.object.as_str(), e.field.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("NetworkPolicy x/old", "apiVersion"),
                ("np.yaml document 2", "metadata.name"),
                ("NetworkPolicy x/typed", "spec.ingress[0].ports[0].port"),
                ("Pod default/noversion", "apiVersion"),
                ("np.yaml document 5", "(document)"),
            ]
        );
        assert!(errors[0].message.contains("networking.k8s.io/v1beta1"));
        assert!(errors[2].message.starts_with("invalid type: sequence"));
    }

    #[test]
    fn list_item_without_name_is_named_by_position() {
        let text = "\
apiVersion: v1
kind: PodList
items:
- metadata: {name: a}
- metadata: {}
";
        let (snapshot, errors) = parse_manifests(text, "l.yaml");
        assert_eq!(names(&snapshot), ["Pod a"]);
        assert_eq!(errors[0].object, "l.yaml document 1 items[1]");
        assert_eq!(errors[0].field, "metadata.name");
    }

    #[test]
    fn a_byte_order_mark_is_dropped_at_the_start_and_before_a_marker() {
        let pod = |name: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\n");
        for text in [
            format!("\u{feff}{}---\n{}", pod("a"), pod("b")),
            format!("\u{feff}---\n{}---\n{}", pod("a"), pod("b")),
            // Two files joined with `cat`, the second one starting with its own mark.
            format!("{}\u{feff}---\n{}", pod("a"), pod("b")),
        ] {
            let (snapshot, errors) = parse_manifests(&text, "bom.yaml");
            assert_eq!(errors, vec![], "{text:?}");
            assert_eq!(names(&snapshot), ["Pod a", "Pod b"], "{text:?}");
        }
    }

    #[test]
    fn invalid_utf8_costs_only_its_document_and_names_its_line() {
        let mut bytes = b"apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n".to_vec();
        bytes.extend_from_slice(
            b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: b\n  labels: {x: \"",
        );
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend_from_slice(b"\"}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: c}\n");
        let (snapshot, errors) = parse_manifest_bytes(&bytes, "latin1.yaml");
        assert_eq!(names(&snapshot), ["Pod a", "Pod c"]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].object, "latin1.yaml document 2");
        assert_eq!(errors[0].field, "(document)");
        assert_eq!(
            errors[0].message,
            "invalid UTF-8 at line 9 column 16 (byte 0xff): the document is left out"
        );
    }

    #[test]
    fn empty_input() {
        let (snapshot, errors) = parse_manifests("", "e.yaml");
        assert!(names(&snapshot).is_empty() && errors.is_empty());
        let (snapshot, errors) = parse_manifests("---\n---\n", "e.yaml");
        assert!(names(&snapshot).is_empty() && errors.is_empty());
    }
}
