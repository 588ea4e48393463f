//! The lab's cluster: Kubernetes YAML (by default the seed's pods and Services of one
//! [`IpFamily`], embedded) → [`LabPods`]: each pod's address and what it serves, the Services
//! with their ClusterIPs, and the snapshot the compiler reads.
//!
//! What a pod serves follows from its containers: the `nginx` image is Debian's nginx and the
//! `httpd` image Debian's apache2, each serving HTTP on its TCP container ports; the `coredns`
//! image is dnsmasq, answering DNS on its UDP and TCP container ports; `amazonlinux` serves
//! nothing (it is the client). Anything else, any pod address outside the family's pod network
//! and any ClusterIP outside its service network is refused with an error naming the object and
//! the field: the lab only builds what it can run exactly, and only in the ranges it owns.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use tollgate_enforcer::{
    manifest::parse_manifests,
    snapshot::{InputError, Snapshot},
};

use crate::{
    LabError,
    family::{IpFamily, Manifest},
};

/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// A default page the lab's HTTP servers serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// nginx's own welcome page.
    NginxWelcome,
    /// The httpd image's `htdocs/index.html`.
    HttpdItWorks,
}

impl Page {
    /// Text that tells the page apart (what a check looks for).
    pub fn marker(self) -> &'static str {
        match self {
            Self::NginxWelcome => "Welcome to nginx!",
            Self::HttpdItWorks => "It works!",
        }
    }

    /// The line of the page that holds the marker, as curl prints it.
    pub fn line(self) -> &'static str {
        match self {
            Self::NginxWelcome => "<title>Welcome to nginx!</title>",
            Self::HttpdItWorks => HTTPD_INDEX.trim_end(),
        }
    }
}

/// The httpd image's `htdocs/index.html`, byte for byte.
pub const HTTPD_INDEX: &str = "<html><body><h1>It works!</h1></body></html>\n";

/// Which program serves HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpServer {
    /// Debian's nginx, with its own default page.
    Nginx,
    /// Debian's apache2, serving the httpd image's page.
    Apache,
}

impl HttpServer {
    /// The page it serves at `/`.
    pub fn page(self) -> Page {
        match self {
            Self::Nginx => Page::NginxWelcome,
            Self::Apache => Page::HttpdItWorks,
        }
    }
}

/// Something a pod serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    /// HTTP on a TCP port.
    Http {
        /// The container port.
        port: u16,
        /// The program.
        server: HttpServer,
    },
    /// DNS on a port, UDP and TCP, answering for every Service.
    Dns {
        /// The container port.
        port: u16,
    },
}

impl Serves {
    /// The port it listens on.
    pub fn port(&self) -> u16 {
        match self {
            Self::Http { port, .. } | Self::Dns { port } => *port,
        }
    }
}

/// One pod of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabPod {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The pod's address, in the family's pod network.
    pub ip: IpAddr,
    /// What it serves.
    pub serves: Vec<Serves>,
}

impl LabPod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A Service's name and ClusterIP, as kube-dns answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceName {
    /// `name.namespace.svc.cluster.local`.
    pub fqdn: String,
    /// Its ClusterIP.
    pub cluster_ip: IpAddr,
}

/// The lab's cluster and what is derived from it.
#[derive(Debug, Clone)]
pub struct LabPods {
    /// The address family of every pod and Service.
    pub family: IpFamily,
    /// Every pod, in manifest order.
    pub pods: Vec<LabPod>,
    /// The manifests' objects, as the compiler reads them.
    pub snapshot: Snapshot,
    /// The Services' names, as kube-dns answers them.
    pub names: Vec<ServiceName>,
}

impl LabPods {
    /// The seed's pods and Services of `family` (`examples/seed/`, embedded).
    pub fn embedded(family: IpFamily) -> Result<Self, LabError> {
        Self::from_manifests(family, &family.manifests())
    }

    /// The cluster of `manifests`. Every problem is reported, and any problem fails the whole
    /// set: the lab runs exactly what it is given.
    pub fn from_manifests(family: IpFamily, manifests: &[Manifest]) -> Result<Self, LabError> {
        let mut snapshot = Snapshot::default();
        let mut errors = Vec::new();
        for manifest in manifests {
            let (parsed, mut found) = parse_manifests(manifest.yaml, manifest.path);
            errors.append(&mut found);
            snapshot.namespaces.extend(parsed.namespaces);
            snapshot.pods.extend(parsed.pods);
            snapshot.policies.extend(parsed.policies);
            snapshot.services.extend(parsed.services);
            snapshot.endpoint_slices.extend(parsed.endpoint_slices);
        }
        let source = manifests
            .iter()
            .map(|m| m.path)
            .collect::<Vec<_>>()
            .join(", ");
        let mut pods = Vec::new();
        for pod in &snapshot.pods {
            match lab_pod(family, pod) {
                Ok(lab_pod) => pods.push(lab_pod),
                Err(mut pod_errors) => errors.append(&mut pod_errors),
            }
        }
        let mut owners = BTreeMap::new();
        for pod in &pods {
            if let Some(other) = owners.insert(pod.ip, pod.key()) {
                errors.push(input_error(
                    &format!("Pod {}", pod.key()),
                    "status.podIP",
                    format!("{} is also the address of {other}", pod.ip),
                ));
            }
        }
        let mut names = Vec::new();
        for service in &snapshot.services {
            match service_name(family, service) {
                Ok(Some(name)) => names.push(name),
                Ok(None) => {}
                Err(error) => errors.push(error),
            }
        }
        if pods.is_empty() && errors.is_empty() {
            errors.push(input_error(&source, "items", "no Pod".to_string()));
        }
        if !errors.is_empty() {
            return Err(LabError::Input {
                manifest: source,
                errors,
            });
        }
        Ok(Self {
            family,
            pods,
            snapshot,
            names,
        })
    }

    /// The ClusterIP of the Service kube-dns answers on: `kube-system/kube-dns`.
    pub fn dns_cluster_ip(&self) -> Result<IpAddr, LabError> {
        let fqdn = format!("kube-dns.kube-system.svc.{CLUSTER_DOMAIN}");
        self.names
            .iter()
            .find(|name| name.fqdn == fqdn)
            .map(|name| name.cluster_ip)
            .ok_or_else(|| {
                LabError::Scenario("no Service kube-system/kube-dns with a ClusterIP".into())
            })
    }
}

fn input_error(object: &str, field: &str, message: String) -> InputError {
    InputError {
        object: object.to_string(),
        field: field.to_string(),
        message,
    }
}

/// The name and ClusterIP of `service` (`None` for a headless one), or why the lab cannot
/// run it.
fn service_name(family: IpFamily, service: &Service) -> Result<Option<ServiceName>, InputError> {
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let object = format!("Service {namespace}/{name}");
    let text = service
        .spec
        .as_ref()
        .and_then(|spec| spec.cluster_ip.as_deref())
        .unwrap_or_default();
    if text == "None" {
        return Ok(None);
    }
    let network = family.service_network();
    match text.parse::<IpAddr>() {
        Ok(ip) if family.is_service_address(ip) => Ok(Some(ServiceName {
            fqdn: format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}"),
            cluster_ip: ip,
        })),
        Ok(ip) => Err(input_error(
            &object,
            "spec.clusterIP",
            format!("{ip} is outside {network}, the lab's {family} service network"),
        )),
        Err(_) => Err(input_error(
            &object,
            "spec.clusterIP",
            format!("{text:?} is not an address (the lab allocates none)"),
        )),
    }
}

/// What the lab makes of one pod, or every reason it cannot run it.
fn lab_pod(family: IpFamily, pod: &Pod) -> Result<LabPod, Vec<InputError>> {
    let namespace = pod.metadata.namespace.clone().unwrap_or("default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let object = format!("Pod {namespace}/{name}");
    let mut errors = Vec::new();

    let status = pod.status.as_ref();
    let ip_text = status
        .and_then(|s| s.pod_ip.clone())
        .or_else(|| status?.pod_ips.as_ref()?.first().map(|ip| ip.ip.clone()));
    let network = family.pod_network();
    let ip = match ip_text.as_deref().map(str::parse::<IpAddr>) {
        None => {
            errors.push(input_error(&object, "status.podIP", "missing".into()));
            None
        }
        Some(Err(_)) => {
            errors.push(input_error(
                &object,
                "status.podIP",
                format!("{:?} is not an address", ip_text.unwrap_or_default()),
            ));
            None
        }
        Some(Ok(ip)) if !family.is_pod_address(ip) => {
            errors.push(input_error(
                &object,
                "status.podIP",
                format!(
                    "{ip} is outside {network} or the node's own ({}), the lab's {family} pod \
                     network",
                    family.node_address()
                ),
            ));
            None
        }
        Some(Ok(ip)) => Some(ip),
    };
    if let Some(ips) = status.and_then(|s| s.pod_ips.as_ref())
        && ips.len() > 1
    {
        errors.push(input_error(
            &object,
            "status.podIPs",
            format!("the lab gives each pod one {family} address"),
        ));
    }

    let mut serves = Vec::new();
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice());
    for (c, container) in containers.unwrap_or_default().iter().enumerate() {
        let image_field = format!("spec.containers[{c}].image");
        let image = container.image.as_deref().unwrap_or_default();
        let role = match image_name(image) {
            "nginx" => Some(Some(HttpServer::Nginx)),
            "httpd" => Some(Some(HttpServer::Apache)),
            "coredns" => Some(None),
            "amazonlinux" => None,
            _ => {
                errors.push(input_error(
                    &object,
                    &image_field,
                    format!("the lab runs no {image:?} (nginx, httpd, coredns or amazonlinux)"),
                ));
                continue;
            }
        };
        for (p, port) in container.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{c}].ports[{p}]");
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            let number = u16::try_from(port.container_port).ok().filter(|&n| n != 0);
            let served = match (role, number, protocol) {
                (_, None, _) => {
                    errors.push(input_error(
                        &object,
                        &format!("{field}.containerPort"),
                        format!("{} is not a port number", port.container_port),
                    ));
                    continue;
                }
                (Some(Some(server)), Some(port), "TCP") => Serves::Http { port, server },
                (Some(None), Some(port), "UDP" | "TCP") => Serves::Dns { port },
                (_, Some(number), _) => {
                    errors.push(input_error(
                        &object,
                        &field,
                        format!(
                            "the lab serves nothing on {number}/{protocol} for image {image:?}"
                        ),
                    ));
                    continue;
                }
            };
            if !serves.contains(&served) {
                serves.push(served);
            }
        }
    }

    match ip {
        Some(ip) if errors.is_empty() => Ok(LabPod {
            namespace,
            name,
            ip,
            serves,
        }),
        _ => Err(errors),
    }
}

/// The image's repository name: `registry.k8s.io/coredns/coredns:v1.11.1` → `coredns`.
fn image_name(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split(':').next().unwrap_or(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert_eq!(image_name("nginx"), "nginx");
        assert_eq!(image_name("httpd:2.4"), "httpd");
        assert_eq!(
            image_name("registry.k8s.io/coredns/coredns:v1.11.1"),
            "coredns"
        );
        assert_eq!(image_name("localhost:5000/nginx@sha256:abc"), "nginx");
    }
}
