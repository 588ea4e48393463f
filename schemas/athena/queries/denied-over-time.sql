-- name: denied-over-time
-- description: Dropped flows (action REJECT) in a time window per second, deciding endpoint (the source pod for egress, the destination pod for ingress) and what the decision trace names, oldest first: the second (start), direction, the endpoint's namespace, pod, workload and labels, the reason, the policy whose rule denied (policy_kind, policy_namespace, policy_name: denied-by-rule), the policies that isolated the endpoint (isolating_policies, comma-separated and sorted: isolated-no-rule-matched), flows, packets, bytes, and the last end. A record is in the window when its span [start, end] overlaps [from, to).
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
--
-- Partition pruning on dt as in denied-flows. A row sums the records that started in the same
-- second at the same endpoint, for the same reason and policies; time buckets of any width are
-- sums of these rows (Athena takes `?` only in WHERE clauses, so no width is a parameter). The endpoint is the pod whose policy
-- refused; the records say which policy that was: a ClusterNetworkPolicy's Deny rule in the
-- policy_* columns, or, for want of a matching rule, the NetworkPolicies that isolated the pod
-- in that direction (isolating_policies, as the compiler of the time had them). Other reasons
-- name no denying policy (service-backends-denied names the rule that allowed the first
-- backend, if any), nor do records written before the decision trace (version 1).
SELECT
  "start",
  flow_direction,
  namespace,
  pod,
  workload,
  max_by(labels, "end") AS labels,
  verdict_reason,
  policy_kind,
  policy_namespace,
  policy_name,
  isolating_policies,
  count(*) AS flows,
  sum(packets) AS packets,
  sum(bytes) AS bytes,
  max("end") AS last_seen
FROM (
  SELECT
    "start",
    "end",
    flow_direction,
    CASE WHEN flow_direction = 'egress' THEN src_namespace ELSE dst_namespace END AS namespace,
    CASE WHEN flow_direction = 'egress' THEN src_pod ELSE dst_pod END AS pod,
    CASE WHEN flow_direction = 'egress' THEN src_workload ELSE dst_workload END AS workload,
    CASE WHEN flow_direction = 'egress' THEN src_labels ELSE dst_labels END AS labels,
    verdict_reason,
    policy_kind,
    policy_namespace,
    policy_name,
    array_join(array_sort(isolating_policies), ',') AS isolating_policies,
    packets,
    bytes
  FROM flows
  WHERE dt >= date_format(from_unixtime(? - 3600), '%Y-%m-%d')
    AND dt <= date_format(from_unixtime(?), '%Y-%m-%d')
    AND "end" >= ?
    AND "start" < ?
    AND log_status = 'OK'
    AND action = 'REJECT'
) AS denied
GROUP BY "start", flow_direction, namespace, pod, workload, verdict_reason, policy_kind,
  policy_namespace, policy_name, isolating_policies
ORDER BY "start", namespace, pod, flow_direction, verdict_reason, policy_kind, policy_namespace,
  policy_name, isolating_policies
