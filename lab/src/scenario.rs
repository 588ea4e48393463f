//! The seed scenario as data: three steps, the policies each has applied (the files of
//! `examples/seed/`, embedded verbatim), the `curl` checks and the outcome the seed shows for
//! each. [`Step::snapshot`] adds a step's policies to the lab's cluster for the compiler;
//! [`Expect::matches`] judges a curl [`Outcome`] by its exit code (and the page it printed).

use tollgate_enforcer::{manifest::parse_manifests, snapshot::Snapshot};

use crate::{LabError, client::Outcome, family::Manifest, pods::LabPods, pods::Page};

/// The pod the checks run from (the seed's AmazonLinux pod).
pub const CLIENT_POD: &str = "default/amazonlinux";

/// A policy manifest of `examples/seed/`, embedded.
pub type PolicyFile = Manifest;

/// The seed's first policy: no traffic in or out of any pod of `default`.
pub const ALL_DENY: PolicyFile = PolicyFile {
    path: "examples/seed/all-deny.yaml",
    yaml: include_str!("../../examples/seed/all-deny.yaml"),
};

/// The seed's two allow policies: amazonlinux may ask kube-dns and reach nginx, and nginx
/// accepts amazonlinux.
pub const ALLOW_AMAZONLINUX_TO_NGINX: PolicyFile = PolicyFile {
    path: "examples/seed/allow-amazonlinux-to-nginx.yaml",
    yaml: include_str!("../../examples/seed/allow-amazonlinux-to-nginx.yaml"),
};

/// The outcome the seed shows for a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// curl exit 0 and the page's marker in what it printed.
    Page(Page),
    /// curl exit 6: the name does not resolve.
    CouldNotResolve,
    /// curl exit 28: the name resolves, the connection times out.
    ConnectTimeout,
}

/// curl's exit code for a name that does not resolve.
pub const CURL_COULDNT_RESOLVE_HOST: i32 = 6;
/// curl's exit code for a timeout.
pub const CURL_OPERATION_TIMEDOUT: i32 = 28;

impl Expect {
    /// Whether `outcome` is what the seed shows.
    pub fn matches(&self, outcome: &Outcome) -> bool {
        match self {
            Self::Page(page) => outcome.exit == 0 && outcome.body.contains(page.marker()),
            Self::CouldNotResolve => outcome.exit == CURL_COULDNT_RESOLVE_HOST,
            Self::ConnectTimeout => outcome.exit == CURL_OPERATION_TIMEDOUT,
        }
    }

    /// The marker a response is checked for, if any.
    pub fn marker(&self) -> Option<&'static str> {
        match self {
            Self::Page(page) => Some(page.marker()),
            Self::CouldNotResolve | Self::ConnectTimeout => None,
        }
    }

    /// The expected outcome as a curl-like line (the time of a timeout elided).
    pub fn describe(&self, host: &str) -> String {
        match self {
            Self::Page(page) => page.line().to_string(),
            Self::CouldNotResolve => format!("curl: (6) Could not resolve host: {host}"),
            Self::ConnectTimeout => format!(
                "curl: (28) Failed to connect to {host} port {} after … ms: \
                 Couldn't connect to server",
                crate::client::HTTP_PORT
            ),
        }
    }
}

/// What curl is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A name, resolved through kube-dns (`nginx`).
    Name(&'static str),
    /// The address of pod `namespace/name` of the cluster at hand, used as it is.
    PodAddress(&'static str),
}

/// One `curl HOST` from the client pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// What curl is given.
    pub target: Target,
    /// What the seed shows.
    pub expect: Expect,
}

impl Check {
    /// The host curl is given in the cluster of `pods`.
    pub fn host(&self, pods: &LabPods) -> Result<String, LabError> {
        match self.target {
            Target::Name(name) => Ok(name.to_owned()),
            Target::PodAddress(key) => pods
                .pods
                .iter()
                .find(|pod| pod.key() == key)
                .map(|pod| match pod.ip {
                    // As curl takes an IPv6 address in a URL.
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    ip @ std::net::IpAddr::V4(_) => ip.to_string(),
                })
                .ok_or_else(|| LabError::Scenario(format!("no pod {key} to curl"))),
        }
    }
}

/// One step of the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// 1-based step number.
    pub number: u32,
    /// What the step is about.
    pub title: &'static str,
    /// The policies applied during the step (all of them, not only the new ones).
    pub policies: &'static [PolicyFile],
    /// The checks, in order.
    pub checks: &'static [Check],
}

impl Step {
    /// The lab's cluster plus this step's policies, as the compiler reads them.
    pub fn snapshot(&self, pods: &LabPods) -> Result<Snapshot, LabError> {
        let mut snapshot = pods.snapshot.clone();
        for policy in self.policies {
            let (parsed, errors) = parse_manifests(policy.yaml, policy.path);
            if !errors.is_empty() {
                return Err(LabError::Input {
                    manifest: policy.path.to_string(),
                    errors,
                });
            }
            snapshot.namespaces.extend(parsed.namespaces);
            snapshot.pods.extend(parsed.pods);
            snapshot.policies.extend(parsed.policies);
        }
        Ok(snapshot)
    }
}

const NGINX_SERVED: Check = Check {
    target: Target::Name("nginx"),
    expect: Expect::Page(Page::NginxWelcome),
};

/// The seed's steps, in order.
pub const STEPS: [Step; 3] = [
    Step {
        number: 1,
        title: "no NetworkPolicy: amazonlinux reaches nginx and httpd by name",
        policies: &[],
        checks: &[
            NGINX_SERVED,
            Check {
                target: Target::Name("httpd"),
                expect: Expect::Page(Page::HttpdItWorks),
            },
        ],
    },
    Step {
        number: 2,
        title: "all-deny in default: kube-dns is unreachable, no name resolves",
        policies: &[ALL_DENY],
        checks: &[
            Check {
                target: Target::Name("nginx"),
                expect: Expect::CouldNotResolve,
            },
            Check {
                target: Target::Name("httpd"),
                expect: Expect::CouldNotResolve,
            },
        ],
    },
    Step {
        number: 3,
        title: "all-deny plus the two allow policies: nginx answers, httpd times out",
        policies: &[ALL_DENY, ALLOW_AMAZONLINUX_TO_NGINX],
        checks: &[
            NGINX_SERVED,
            Check {
                target: Target::Name("httpd"),
                expect: Expect::ConnectTimeout,
            },
        ],
    },
];

/// Step 4 of `lab --quarantine`: default-deny for kube-system in audit mode.
pub const KUBE_SYSTEM_AUDIT: PolicyFile = PolicyFile {
    path: "examples/incident/kube-system-default-deny-audit.yaml",
    yaml: include_str!("../../examples/incident/kube-system-default-deny-audit.yaml"),
};

/// Why the lab quarantines the client, as `--reason` says it.
pub const QUARANTINE_REASON: &str =
    "lab: amazonlinux suspected compromised; isolate it and keep the evidence";

/// The steps `lab --quarantine` adds after the seed's. Step 5's cluster also has what
/// `tollgate quarantine` adds to it (the label and the policy), applied by the walk.
pub const QUARANTINE_STEPS: [Step; 2] = [
    Step {
        number: 4,
        title: "default-deny for kube-system in audit mode: DNS still answers, the would-be \
                denies are recorded",
        policies: &[ALL_DENY, ALLOW_AMAZONLINUX_TO_NGINX, KUBE_SYSTEM_AUDIT],
        checks: &[NGINX_SERVED],
    },
    Step {
        number: 5,
        title: "tollgate quarantine default/amazonlinux: it keeps trying kube-dns and nginx, \
                by name and by address, and reaches neither",
        policies: &[ALL_DENY, ALLOW_AMAZONLINUX_TO_NGINX, KUBE_SYSTEM_AUDIT],
        checks: &[
            Check {
                target: Target::Name("nginx"),
                expect: Expect::CouldNotResolve,
            },
            Check {
                target: Target::PodAddress("default/nginx"),
                expect: Expect::ConnectTimeout,
            },
        ],
    },
];

/// The denial only the quarantine causes: nginx allows amazonlinux by rule, the quarantine
/// cuts it off anyway.
pub const QUARANTINE_DENIED_FLOWS: [DeniedFlow; 1] = [DeniedFlow {
    what: "curl nginx's address blocked by the quarantine",
    src_pod: CLIENT_POD,
    dst: Destination::Pod("default/nginx"),
    protocol: 6,
    dst_port: 80,
}];

/// Where a denied flow was addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Pod `namespace/name`, by its address.
    Pod(&'static str),
    /// Service `namespace/name`, by its ClusterIP (the record's `svc_*` columns name it).
    Service(&'static str),
}

/// A denial the flow log must show at the end of the walk, as a `REJECT` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeniedFlow {
    /// What the seed shows.
    pub what: &'static str,
    /// Source pod, `namespace/name`.
    pub src_pod: &'static str,
    /// Where it was addressed.
    pub dst: Destination,
    /// IANA protocol number.
    pub protocol: i32,
    /// Destination port (the Service port for a Service).
    pub dst_port: i32,
}

/// The denials of the seed, as the flow log records them: addressed to the Services'
/// ClusterIPs, where the client's egress policy decides them (before kube-proxy's DNAT).
pub const DENIED_FLOWS: [DeniedFlow; 2] = [
    DeniedFlow {
        what: "DNS lookups blocked by all-deny",
        src_pod: CLIENT_POD,
        dst: Destination::Service("kube-system/kube-dns"),
        protocol: 17,
        dst_port: 53,
    },
    DeniedFlow {
        what: "curl httpd blocked",
        src_pod: CLIENT_POD,
        dst: Destination::Service("default/httpd"),
        protocol: 6,
        dst_port: 80,
    },
];

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn curl(exit: i32, body: &str) -> Outcome {
        Outcome {
            exit,
            body: body.into(),
            error: String::new(),
            elapsed: Duration::from_millis(1),
        }
    }

    #[test]
    fn expectations_judge_curls_exit_code_and_page() {
        let page = curl(0, crate::pods::HTTPD_INDEX);
        assert!(Expect::Page(Page::HttpdItWorks).matches(&page));
        assert!(!Expect::Page(Page::NginxWelcome).matches(&page));
        assert!(!Expect::CouldNotResolve.matches(&page));
        let timeout = curl(28, "");
        assert!(Expect::ConnectTimeout.matches(&timeout));
        assert!(!Expect::CouldNotResolve.matches(&timeout));
        assert!(Expect::CouldNotResolve.matches(&curl(6, "")));
        assert_eq!(
            Expect::Page(Page::NginxWelcome).describe("nginx"),
            "<title>Welcome to nginx!</title>"
        );
        assert_eq!(
            Expect::Page(Page::HttpdItWorks).describe("httpd"),
            "<html><body><h1>It works!</h1></body></html>"
        );
    }
}
