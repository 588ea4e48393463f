-- name: pod-timeline
-- description: Everything recorded about one pod in a time window, oldest first: its flow records (log_status OK, the pod as source or destination, every verdict, the Service a flow was addressed to) and its isolation records (log_status ISOLATION: quarantine or release, who and why, the quarantine policy). A record is in the window when its span [start, end] overlaps [from, to).
-- param: namespace string namespace of the pod
-- param: pod string name of the pod
-- param: namespace string namespace of the pod
-- param: pod string name of the pod
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
--
-- Partition pruning on dt as in denied-flows. An ISOLATION record names the isolated pod as
-- its source (start = end = the time of the isolation, policy_namespace/policy_name = the
-- quarantine NetworkPolicy); at the same second it sorts before the flow records.
SELECT
  "start",
  "end",
  log_status,
  flow_direction,
  action,
  verdict,
  verdict_reason,
  policy_namespace,
  policy_name,
  policy_rule,
  enforcement_mode,
  src_namespace,
  src_pod,
  src_workload,
  srcaddr,
  srcport,
  dst_namespace,
  dst_pod,
  dst_workload,
  dstaddr,
  dstport,
  svc_namespace,
  svc_name,
  svc_addr,
  svc_port,
  protocol,
  packets,
  bytes,
  events,
  isolation_action,
  isolation_actor,
  isolation_reason,
  node,
  cluster
FROM flows
WHERE (
    (src_namespace = ? AND src_pod = ?)
    OR (dst_namespace = ? AND dst_pod = ?)
  )
  AND dt >= date_format(from_unixtime(? - 3600), '%Y-%m-%d')
  AND dt <= date_format(from_unixtime(?), '%Y-%m-%d')
  AND "end" >= ?
  AND "start" < ?
  AND log_status IN ('ISOLATION', 'OK')
ORDER BY "start", log_status, node, srcaddr, srcport, dstaddr, dstport, protocol, flow_direction,
  verdict
