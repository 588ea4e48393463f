-- name: top-denied-destinations
-- description: The destinations with the most dropped packets (action REJECT) in a time window, per port and protocol, most first: pod (or address outside the cluster, or a Service's ClusterIP with the Service named), flows, packets, bytes, distinct sources, first and last seen. A record is in the window when its span [start, end] overlaps [from, to).
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: limit bigint how many destinations to return, at most
--
-- Partition pruning on dt as in denied-flows. A destination is a pod with its address, or an
-- address alone outside the cluster, or a Service's ClusterIP (svc_namespace, svc_name: the
-- Service that held it; the refusal came before kube-proxy picked a backend), with the port
-- and protocol that were refused. Athena
-- takes `?` only in WHERE clauses, so the limit is a filter on the rank rather than LIMIT ?.
SELECT
  rank,
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
  sources,
  first_seen,
  last_seen
FROM (
  SELECT
    row_number() OVER (
      ORDER BY sum(packets) DESC, count(*) DESC, dst_namespace, dst_pod, dstaddr, svc_namespace,
        svc_name, dstport, protocol
    ) AS rank,
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
    count(DISTINCT srcaddr) AS sources,
    min("start") AS first_seen,
    max("end") AS last_seen
  FROM flows
  WHERE dt >= date_format(from_unixtime(? - 3600), '%Y-%m-%d')
    AND dt <= date_format(from_unixtime(?), '%Y-%m-%d')
    AND "end" >= ?
    AND "start" < ?
    AND log_status = 'OK'
    AND action = 'REJECT'
  GROUP BY dst_namespace, dst_pod, dst_workload, dstaddr, svc_namespace, svc_name, dstport, protocol
) AS ranked
WHERE rank <= ?
ORDER BY rank
