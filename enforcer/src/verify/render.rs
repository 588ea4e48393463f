//! [`ProbeResult`]s → text: JSON Lines for programs ([`render_json`]), aligned columns for
//! people ([`render_table`]).

use super::run::{ProbeResult, ProbeVerdict};
use crate::columns;

/// JSON Lines: one object per probe, in input order, each line ending in `\n`.
///
/// Fields: `from`, `to` (as written), `src`, `dst` (the addresses they resolved to; through a
/// Service, the backend's), `service` and `backend` (through a Service: `namespace/name` and
/// the backend's `namespace/pod`, one object per backend; else null), `service_addr` (the
/// ClusterIP addressed, or null), `port` (as written), `target_port` (the port the server
/// receives on), `protocol`, `verdict` (`allow` or `deny`), `audit` (true when the flow passes only because
/// of audit mode), `reason`, `at` (the hook that decided), `policy` and `rule` of the deciding
/// decision (null when no rule decided), and `hooks`: `egress`, `ingress`, `reply_egress`, `reply_ingress`, each null (not
/// reached) or `{verdict, reason, policy, rule}` with the hook's own verdict (`allow`, `deny`
/// or `audit-deny`).
pub fn render_json(results: &[ProbeResult]) -> String {
    results
        .iter()
        .map(|result| {
            // Strings, numbers and options only: serializing cannot fail, but should it, the
            // line says so instead of vanishing.
            let mut line = serde_json::to_string(result)
                .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
            line.push('\n');
            line
        })
        .collect()
}

/// Aligned columns FROM, TO (through a Service: `service:ns/name -> ns/backend`), PORT/PROTO, VERDICT, REASON, AT (the hook that decided),
/// POLICY/RULE, a header line first.
pub fn render_table(results: &[ProbeResult]) -> String {
    let rows = results.iter().map(|r| {
        let verdict = match (r.verdict, r.audit) {
            (ProbeVerdict::Allow, false) => "allow",
            (ProbeVerdict::Allow, true) => "allow (audit)",
            (ProbeVerdict::Deny, _) => "deny",
        };
        let by = match (&r.policy, &r.rule) {
            (Some(policy), Some(rule)) => format!("{policy} {rule}"),
            (None, Some(rule)) => rule.clone(),
            _ => "-".to_owned(),
        };
        let to = match &r.backend {
            Some(backend) => format!("{} -> {backend}", r.to),
            None => r.to.clone(),
        };
        vec![
            r.from.clone(),
            to,
            format!("{}/{}", r.port, r.protocol),
            verdict.to_owned(),
            r.reason.to_owned(),
            r.at.unwrap_or("-").to_owned(),
            by,
        ]
    });
    columns::render(
        [
            "FROM",
            "TO",
            "PORT/PROTO",
            "VERDICT",
            "REASON",
            "AT",
            "POLICY/RULE",
        ]
        .map(str::to_owned)
        .to_vec(),
        rows,
    )
}
