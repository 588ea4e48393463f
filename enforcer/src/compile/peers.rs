//! Peers: a rule's `from`/`to` entries are checked once into [`Peer`]s, which `identities` and
//! `sets` resolve against the cluster into the peer identities they stand for.
//!
//! - `podSelector` alone: pods of the policy's namespace; `namespaceSelector` alone: every pod
//!   of the matching namespaces; both: matching pods in matching namespaces. Only networked
//!   pods count (an address of their own, not finished), each address a /32 or /128.
//! - `ipBlock`: the CIDR minus its excepts, purely by address (pod addresses included).
//! - No peers at all: every address, i.e. `::/0` and `0.0.0.0/0`.

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;

use super::Problems;
use super::cidr::{Prefix, parse_cidr};
use super::selector::Selector;

/// One checked entry of `from` or `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Peer {
    /// Pods chosen by label.
    Pods {
        /// `namespaceSelector`; `None`: the policy's own namespace.
        namespaces: Option<Selector>,
        /// `podSelector`; `None`: every pod of the chosen namespaces.
        pods: Option<Selector>,
    },
    /// An `ipBlock`.
    Block(Block),
    /// A ClusterNetworkPolicy's `nodes`: the addresses of the nodes whose labels match.
    Nodes(Selector),
}

/// An `ipBlock`: `cidr` minus `excepts`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Block {
    /// The block.
    pub(crate) cidr: Prefix,
    /// Holes in it, each strictly inside `cidr`.
    pub(crate) excepts: Vec<Prefix>,
}

impl Block {
    /// Whether `prefix` lies in the block and in none of its holes.
    pub(crate) fn covers(&self, prefix: Prefix) -> bool {
        self.cidr.contains(prefix) && !self.excepts.iter().any(|e| e.contains(prefix))
    }
}

/// Checks `from`/`to` (at `path`); absent or empty means every address (`None`).
pub(crate) fn parse_peers(
    peers: Option<&[NetworkPolicyPeer]>,
    path: &str,
    problems: &mut Problems,
) -> Option<Option<Vec<Peer>>> {
    let peers = peers.unwrap_or_default();
    if peers.is_empty() {
        return Some(None);
    }
    let before = problems.len();
    let checked: Vec<Peer> = peers
        .iter()
        .enumerate()
        .filter_map(|(index, peer)| parse_peer(peer, &format!("{path}[{index}]"), problems))
        .collect();
    (problems.len() == before).then_some(Some(checked))
}

fn parse_peer(peer: &NetworkPolicyPeer, at: &str, problems: &mut Problems) -> Option<Peer> {
    match (&peer.ip_block, &peer.namespace_selector, &peer.pod_selector) {
        (None, None, None) => {
            problems.push(at, "a peer needs podSelector, namespaceSelector or ipBlock");
            None
        }
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            problems.push(
                at,
                "ipBlock cannot be combined with podSelector or namespaceSelector",
            );
            None
        }
        (Some(block), None, None) => {
            let cidr_at = format!("{at}.ipBlock.cidr");
            let cidr = parse_cidr(&block.cidr)
                .map_err(|message| problems.push(&cidr_at, message))
                .ok();
            let mut excepts = Vec::new();
            let mut valid = cidr.is_some();
            for (index, except) in block.except.iter().flatten().enumerate() {
                let except_at = format!("{at}.ipBlock.except[{index}]");
                match (parse_cidr(except), cidr) {
                    (Err(message), _) => {
                        problems.push(except_at, message);
                        valid = false;
                    }
                    (Ok(hole), Some(cidr)) if !(cidr.contains(hole) && hole.len() > cidr.len()) => {
                        problems.push(
                            except_at,
                            format!(
                                "{except:?} is not strictly inside the cidr {:?} (same family, \
                                 longer prefix)",
                                block.cidr
                            ),
                        );
                        valid = false;
                    }
                    (Ok(hole), _) => excepts.push(hole),
                }
            }
            let cidr = cidr.filter(|_| valid)?;
            excepts.sort();
            excepts.dedup();
            Some(Peer::Block(Block { cidr, excepts }))
        }
        (None, namespaces, pods) => {
            // Both selectors are checked before giving up, so every problem is reported.
            let namespaces = namespaces.as_ref().map(|s| {
                Selector::parse(s, &format!("{at}.namespaceSelector"), problems).ok_or(())
            });
            let pods = pods
                .as_ref()
                .map(|s| Selector::parse(s, &format!("{at}.podSelector"), problems).ok_or(()));
            Some(Peer::Pods {
                namespaces: namespaces.transpose().ok()?,
                pods: pods.transpose().ok()?,
            })
        }
    }
}
