-- name: denied-service-flows
-- description: Dropped flows (action REJECT) addressed to a Service's ClusterIP in a time window, per Service, Service port, protocol, source and reason, most packets first: the Service (namespace, name, ClusterIP, port), the source as pod and workload (or an address), the reason (service-backends-denied when policy allows only some of the Service's ready backends, isolated-no-rule-matched when it allows none), flows, packets, bytes, first and last seen. A record is in the window when its span [start, end] overlaps [from, to).
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
--
-- Partition pruning on dt as in denied-flows. A connection to ClusterIP:port is decided at the
-- client pod's egress, before kube-proxy rewrites it to a backend; the collector names the
-- Service that held that ClusterIP, port and protocol at the time (svc_*). service-backends-
-- denied means a NetworkPolicy allows some backends but not all: the connection is refused
-- because kube-proxy could pick a denied one (allow the rest, or none). The source port is
-- not a key.
SELECT
  svc_namespace,
  svc_name,
  svc_addr,
  svc_port,
  protocol,
  src_namespace,
  src_pod,
  src_workload,
  srcaddr,
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
  AND action = 'REJECT'
  AND svc_name IS NOT NULL
GROUP BY svc_namespace, svc_name, svc_addr, svc_port, protocol, src_namespace, src_pod,
  src_workload, srcaddr, verdict_reason
ORDER BY sum(packets) DESC, count(*) DESC, svc_namespace, svc_name, svc_addr, svc_port, protocol,
  src_namespace, src_pod, srcaddr, verdict_reason
