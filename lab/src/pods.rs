//! The lab's pods: Kubernetes YAML (by default `examples/seed/lab-pods.yaml`, embedded) →
//! [`LabPods`]: each pod's address and what it serves, plus the snapshot the compiler reads and
//! the DNS zone kube-dns answers from.
//!
//! What a pod serves follows from its containers: the `nginx` and `httpd` images serve their
//! page over HTTP on each TCP container port, the `coredns` image answers DNS on each UDP
//! container port, `amazonlinux` serves nothing (it is the client). Anything else, and any
//! address outside 198.18.0.0/24, is refused with an error naming the pod and the field: the
//! lab only builds what it can run exactly, and only in the address range it owns.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use tollgate_enforcer::{
    manifest::parse_manifests,
    snapshot::{InputError, Snapshot},
};

use crate::{LabError, dns::Zone};

/// The pods of the seed scenario, as the lab runs them.
pub const LAB_PODS_YAML: &str = include_str!("../../examples/seed/lab-pods.yaml");
/// Where [`LAB_PODS_YAML`] lives in the repository (used in error messages).
pub const LAB_PODS_SOURCE: &str = "examples/seed/lab-pods.yaml";

/// The only addresses the lab gives out: 198.18.0.0/24 (RFC 2544 benchmarking range).
pub const LAB_NETWORK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// Prefix length of [`LAB_NETWORK`].
pub const LAB_PREFIX_LEN: u8 = 24;

/// A web page the lab's HTTP servers serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// nginx's welcome page, as the seed shows it.
    NginxWelcome,
    /// Apache httpd's default page.
    HttpdItWorks,
}

impl Page {
    /// The page's HTML.
    pub fn html(self) -> &'static str {
        match self {
            Self::NginxWelcome => include_str!("pages/nginx.html"),
            Self::HttpdItWorks => include_str!("pages/httpd.html"),
        }
    }

    /// The `Server` header the real server sends.
    pub fn server(self) -> &'static str {
        match self {
            Self::NginxWelcome => "nginx/1.25.4",
            Self::HttpdItWorks => "Apache/2.4.58 (Unix)",
        }
    }

    /// Text that tells the page apart (what the client checks for).
    pub fn marker(self) -> &'static str {
        match self {
            Self::NginxWelcome => "Welcome to nginx!",
            Self::HttpdItWorks => "It works!",
        }
    }
}

/// Something a pod serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// HTTP on a TCP port.
    Http {
        /// The container port.
        port: u16,
        /// The page served at `/`.
        page: Page,
    },
    /// DNS on a UDP port, answering for every lab pod.
    Dns {
        /// The container port.
        port: u16,
    },
}

/// One pod of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabPod {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name (also the name of the Service that resolves to it).
    pub name: String,
    /// The pod's address, in [`LAB_NETWORK`].
    pub ip: Ipv4Addr,
    /// What it serves.
    pub services: Vec<Service>,
}

impl LabPod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The lab's pods and what is derived from them.
#[derive(Debug, Clone)]
pub struct LabPods {
    /// Every pod, in manifest order.
    pub pods: Vec<LabPod>,
    /// The manifest's objects, as the compiler reads them.
    pub snapshot: Snapshot,
    /// The names kube-dns answers.
    pub zone: Zone,
}

impl LabPods {
    /// The pods of `examples/seed/lab-pods.yaml`.
    pub fn embedded() -> Result<Self, LabError> {
        Self::from_manifests(LAB_PODS_YAML, LAB_PODS_SOURCE)
    }

    /// The pods of the manifests in `text` (named `source` in errors). Every problem is
    /// reported, and any problem fails the whole set: the lab runs exactly what it is given.
    pub fn from_manifests(text: &str, source: &str) -> Result<Self, LabError> {
        let (snapshot, mut errors) = parse_manifests(text, source);
        let mut pods = Vec::new();
        for pod in &snapshot.pods {
            match lab_pod(pod) {
                Ok(lab_pod) => pods.push(lab_pod),
                Err(mut pod_errors) => errors.append(&mut pod_errors),
            }
        }
        let mut zone = Zone::new();
        let mut owners = BTreeMap::new();
        for pod in &pods {
            let object = format!("Pod {}", pod.key());
            if let Some(other) = owners.insert(pod.ip, pod.key()) {
                errors.push(input_error(
                    &object,
                    "status.podIP",
                    format!("{} is also the address of {other}", pod.ip),
                ));
            }
            if let Err(conflict) = zone.insert_service(&pod.namespace, &pod.name, pod.ip) {
                errors.push(input_error(&object, "metadata.name", conflict.to_string()));
            }
        }
        if pods.is_empty() && errors.is_empty() {
            errors.push(input_error(source, "items", "no Pod".to_string()));
        }
        if !errors.is_empty() {
            return Err(LabError::Input {
                manifest: source.to_string(),
                errors,
            });
        }
        Ok(Self {
            pods,
            snapshot,
            zone,
        })
    }

    /// The pod serving DNS and its port, when exactly one pod does.
    pub fn dns_server(&self) -> Result<(&LabPod, u16), LabError> {
        let mut servers = self.pods.iter().flat_map(|pod| {
            pod.services
                .iter()
                .filter_map(move |service| match service {
                    Service::Dns { port } => Some((pod, *port)),
                    Service::Http { .. } => None,
                })
        });
        match (servers.next(), servers.next()) {
            (Some(server), None) => Ok(server),
            (None, _) => Err(LabError::Scenario("no pod serves DNS".into())),
            (Some(_), Some(_)) => Err(LabError::Scenario(
                "more than one DNS server; the client knows one".into(),
            )),
        }
    }
}

/// Whether `ip` is one the lab may hand out: inside [`LAB_NETWORK`], neither its network nor
/// its broadcast address.
pub fn is_lab_address(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - LAB_PREFIX_LEN);
    let host = u32::from(ip) & !mask;
    u32::from(ip) & mask == u32::from(LAB_NETWORK) && host != 0 && host != !mask
}

fn input_error(object: &str, field: &str, message: String) -> InputError {
    InputError {
        object: object.to_string(),
        field: field.to_string(),
        message,
    }
}

/// What the lab makes of one pod, or every reason it cannot run it.
fn lab_pod(pod: &Pod) -> Result<LabPod, Vec<InputError>> {
    let namespace = pod.metadata.namespace.clone().unwrap_or("default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let object = format!("Pod {namespace}/{name}");
    let mut errors = Vec::new();

    let status = pod.status.as_ref();
    let ip_text = status
        .and_then(|s| s.pod_ip.clone())
        .or_else(|| status?.pod_ips.as_ref()?.first().map(|ip| ip.ip.clone()));
    let ip = match ip_text.as_deref().map(str::parse::<Ipv4Addr>) {
        None => {
            errors.push(input_error(&object, "status.podIP", "missing".into()));
            None
        }
        Some(Err(_)) => {
            errors.push(input_error(
                &object,
                "status.podIP",
                format!("{:?} is not an IPv4 address", ip_text.unwrap_or_default()),
            ));
            None
        }
        Some(Ok(ip)) if !is_lab_address(ip) => {
            errors.push(input_error(
                &object,
                "status.podIP",
                format!("{ip} is outside {LAB_NETWORK}/{LAB_PREFIX_LEN}, the lab's only range"),
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
            "the lab gives each pod one IPv4 address".into(),
        ));
    }

    let mut services = Vec::new();
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice());
    for (c, container) in containers.unwrap_or_default().iter().enumerate() {
        let image_field = format!("spec.containers[{c}].image");
        let image = container.image.as_deref().unwrap_or_default();
        let role = match image_name(image) {
            "nginx" => Some(("TCP", Some(Page::NginxWelcome))),
            "httpd" => Some(("TCP", Some(Page::HttpdItWorks))),
            "coredns" => Some(("UDP", None)),
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
            match (role, number) {
                (_, None) => errors.push(input_error(
                    &object,
                    &format!("{field}.containerPort"),
                    format!("{} is not a port number", port.container_port),
                )),
                (Some((served, page)), Some(number)) if protocol == served => {
                    services.push(match page {
                        Some(page) => Service::Http { port: number, page },
                        None => Service::Dns { port: number },
                    });
                }
                (_, Some(number)) => errors.push(input_error(
                    &object,
                    &field,
                    format!("the lab serves nothing on {number}/{protocol} for image {image:?}"),
                )),
            }
        }
    }

    match ip {
        Some(ip) if errors.is_empty() => Ok(LabPod {
            namespace,
            name,
            ip,
            services,
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

    #[test]
    fn lab_addresses() {
        assert!(is_lab_address(Ipv4Addr::new(198, 18, 0, 1)));
        assert!(is_lab_address(Ipv4Addr::new(198, 18, 0, 254)));
        for outside in [
            Ipv4Addr::new(198, 18, 0, 0),
            Ipv4Addr::new(198, 18, 0, 255),
            Ipv4Addr::new(198, 18, 1, 1),
            Ipv4Addr::new(10, 0, 0, 1),
        ] {
            assert!(!is_lab_address(outside), "{outside}");
        }
    }
}
