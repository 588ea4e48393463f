-- name: unselected-pods
-- description: Pods that no NetworkPolicy selects (verdict_reason no-policy-selects-pod) and that had flows in a time window, per direction in which they are unprotected: namespace, pod, workload, directions, flows, packets, last seen. A record is in the window when its span [start, end] overlaps [from, to).
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
--
-- Partition pruning on dt as in denied-flows. The pod is the deciding endpoint: the source
-- of an egress record, the destination of an ingress record. directions lists, comma-
-- separated and sorted, the directions in which no policy selected it (egress, ingress).
SELECT
  namespace,
  pod,
  workload,
  array_join(array_sort(array_agg(DISTINCT flow_direction)), ',') AS directions,
  count(*) AS flows,
  sum(packets) AS packets,
  max("end") AS last_seen
FROM (
  SELECT
    CASE WHEN flow_direction = 'egress' THEN src_namespace ELSE dst_namespace END AS namespace,
    CASE WHEN flow_direction = 'egress' THEN src_pod ELSE dst_pod END AS pod,
    CASE WHEN flow_direction = 'egress' THEN src_workload ELSE dst_workload END AS workload,
    flow_direction,
    packets,
    "end"
  FROM flows
  WHERE dt >= date_format(from_unixtime(? - 3600), '%Y-%m-%d')
    AND dt <= date_format(from_unixtime(?), '%Y-%m-%d')
    AND "end" >= ?
    AND "start" < ?
    AND log_status = 'OK'
    AND verdict_reason = 'no-policy-selects-pod'
) AS unselected
GROUP BY namespace, pod, workload
ORDER BY namespace, pod, workload
