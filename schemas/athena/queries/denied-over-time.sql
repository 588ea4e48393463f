-- name: denied-over-time
-- description: Dropped flows (action REJECT) in a time window per second and deciding endpoint (the source pod for egress, the destination pod for ingress), oldest first: the second (start), direction, the endpoint's namespace, pod, workload and labels, the reason, flows, packets, bytes, and the last end. A record is in the window when its span [start, end] overlaps [from, to).
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
--
-- Partition pruning on dt as in denied-flows. A row sums the records that started in the same
-- second at the same endpoint; time buckets of any width are sums of these rows (Athena takes
-- `?` only in WHERE clauses, so no width is a parameter). The endpoint is the pod whose policy
-- refused: a deny names no policy, so its labels (as of the row's last record) and the second
-- (before or after a quarantine, to the second) tell which NetworkPolicies isolated it.
SELECT
  "start",
  flow_direction,
  namespace,
  pod,
  workload,
  max_by(labels, "end") AS labels,
  verdict_reason,
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
GROUP BY "start", flow_direction, namespace, pod, workload, verdict_reason
ORDER BY "start", namespace, pod, flow_direction, verdict_reason
