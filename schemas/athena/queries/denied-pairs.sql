-- name: denied-pairs
-- description: The source → destination pairs with the most dropped packets (action REJECT) in a time window, per direction, destination port and protocol, most first: both ends as pod and workload (or an address outside the cluster; the node itself as workload Node/<node>), the Service the flow was addressed to (null when none), flows, packets, bytes, first and last seen. A record is in the window when its span [start, end] overlaps [from, to).
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: limit bigint how many pairs to return, at most
--
-- Partition pruning on dt as in denied-flows. flow_direction says whose policy refused: the
-- source's (egress) or the destination's (ingress); the same pair can be refused at both ends.
-- The source port is not a key (it changes with every connection). A flow to a Service's
-- ClusterIP has the ClusterIP as dstaddr (decided before kube-proxy's rewrite) and names the
-- Service in svc_namespace, svc_name. Athena takes `?` only in
-- WHERE clauses, so the limit is a filter on the rank rather than LIMIT ?.
SELECT
  rank,
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
  flows,
  packets,
  bytes,
  first_seen,
  last_seen
FROM (
  SELECT
    row_number() OVER (
      ORDER BY sum(packets) DESC, count(*) DESC, src_namespace, src_pod, srcaddr, dst_namespace,
        dst_pod, dstaddr, svc_namespace, svc_name, dstport, protocol, flow_direction
    ) AS rank,
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
    AND action = 'REJECT'
  GROUP BY flow_direction, src_namespace, src_pod, src_workload, srcaddr, dst_namespace, dst_pod,
    dst_workload, dstaddr, svc_namespace, svc_name, dstport, protocol
) AS ranked
WHERE rank <= ?
ORDER BY rank
