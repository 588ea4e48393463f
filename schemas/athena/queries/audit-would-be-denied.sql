-- name: audit-would-be-denied
-- description: What enforcing would break: flows that endpoints in audit mode would have denied (verdict audit-deny; the packets passed) in a time window, per direction, source, destination, port and protocol, most packets first: both ends as pod and workload (or an address outside the cluster; the node itself as workload Node/<node>), the Service the flow was addressed to (null when none), the reason, flows, packets, bytes, first and last seen. A record is in the window when its span [start, end] overlaps [from, to).
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
--
-- Partition pruning on dt as in denied-flows. The deciding endpoint is the source for egress
-- and the destination for ingress (tollgate.io/enforcement: audit on its namespace or on the
-- policies that isolate it). Each row is a flow that needs an allow rule before the endpoint
-- is switched to enforce. The source port is not a key.
SELECT
  flow_direction,
  src_namespace,
  src_pod,
  src_workload,
  srcaddr,
  dst_namespace,
  dst_pod,
  dst_workload,
  dstaddr,
  svc_namespace,
  svc_name,
  dstport,
  protocol,
  verdict_reason,
  count(*) AS flows,
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
  AND verdict = 'audit-deny'
GROUP BY flow_direction, src_namespace, src_pod, src_workload, srcaddr, dst_namespace, dst_pod,
  dst_workload, dstaddr, svc_namespace, svc_name, dstport, protocol, verdict_reason
ORDER BY sum(packets) DESC, count(*) DESC, src_namespace, src_pod, srcaddr, dst_namespace, dst_pod,
  dstaddr, svc_namespace, svc_name, dstport, protocol, flow_direction
