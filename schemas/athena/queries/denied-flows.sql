-- name: denied-flows
-- description: Flows whose packets were dropped (action REJECT) in a time window, oldest first: pods, namespaces, addresses, ports, the Service a flow was addressed to (namespace, name, ClusterIP, port; null when none), protocol, packets, bytes, the reason and the node. A record is in the window when its span [start, end] overlaps [from, to).
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
--
-- Partition pruning: the collector files each record under the dt/hour of its own start
-- (UTC), and a flow record spans at most one aggregation window (60 s by default), so a record
-- overlapping the window has dt between the day of (from - 1 hour) and the day of to.
SELECT
  "start",
  "end",
  flow_direction,
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
  packets,
  bytes,
  verdict,
  verdict_reason,
  enforcement_mode,
  node,
  cluster
FROM flows
WHERE dt >= date_format(from_unixtime(? - 3600), '%Y-%m-%d')
  AND dt <= date_format(from_unixtime(?), '%Y-%m-%d')
  AND "end" >= ?
  AND "start" < ?
  AND log_status = 'OK'
  AND action = 'REJECT'
ORDER BY "start", node, srcaddr, srcport, dstaddr, dstport, protocol, flow_direction
