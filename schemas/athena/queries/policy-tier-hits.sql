-- name: policy-tier-hits
-- description: Which tier decided the flows of a time window, and how: per policy tier (Admin, NetworkPolicy, Baseline, in the order they decide), action (Accept, Deny, Pass, Allow; null for a NetworkPolicy's default deny, which no rule decides), policy (kind, namespace, name) and verdict: flows, decisions, packets, bytes, first and last seen. Flows no tier decided (no policy selects the pod, established, reply, from-node) are left out. A record is in the window when its span [start, end] overlaps [from, to).
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
--
-- Partition pruning on dt as in denied-flows. The decision trace columns (policy_tier,
-- policy_kind, policy_action) exist from record version 2 on: older files read them as null
-- and do not count here. A Pass appears only for default-allow, the Pass that sent the flow
-- past its tier.
SELECT
  policy_tier,
  policy_action,
  policy_kind,
  policy_namespace,
  policy_name,
  verdict,
  count(*) AS flows,
  sum(events) AS decisions,
  sum(packets) AS packets,
  sum(bytes) AS bytes,
  min("start") AS first_seen,
  max("end") AS last_seen
FROM flows
WHERE dt >= date_format(from_unixtime(? - 3600), '%Y-%m-%d')
  AND dt <= date_format(from_unixtime(?), '%Y-%m-%d')
  AND "end" >= ?
  AND "start" < ?
  AND log_status = 'OK'
  AND policy_tier IS NOT NULL
GROUP BY policy_tier, policy_action, policy_kind, policy_namespace, policy_name, verdict
ORDER BY
  CASE policy_tier WHEN 'Admin' THEN 0 WHEN 'NetworkPolicy' THEN 1 ELSE 2 END,
  policy_action, policy_kind, policy_namespace, policy_name, verdict
