-- name: pod-flows
-- description: Every flow of one pod in a time window, as source or destination, allowed and denied, oldest first, with the verdict, its reason, the deciding policy rule and the Service a flow was addressed to (svc_*, null when none). A record is in the window when its span [start, end] overlaps [from, to).
-- param: namespace string namespace of the pod
-- param: pod string name of the pod
-- param: namespace string namespace of the pod
-- param: pod string name of the pod
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
--
-- Partition pruning on dt as in denied-flows. A flow the pod's own policy decided has the pod
-- as source when flow_direction is egress and as destination when it is ingress; the other
-- records are the peer's decisions about flows to or from the pod.
SELECT
  "start",
  "end",
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
  srcaddr,
  srcport,
  dst_namespace,
  dst_pod,
  dstaddr,
  dstport,
  svc_namespace,
  svc_name,
  svc_addr,
  svc_port,
  protocol,
  tcp_flags,
  icmp_type,
  icmp_code,
  packets,
  bytes,
  events,
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
  AND log_status = 'OK'
ORDER BY "start", node, srcaddr, srcport, dstaddr, dstport, protocol, flow_direction, verdict
