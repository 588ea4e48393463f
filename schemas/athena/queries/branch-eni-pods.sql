-- name: branch-eni-pods
-- description: Pods with a branch ENI of their own (security groups for pods) whose flows tollgate decided in a time window, so that their security groups applied as well as NetworkPolicy: namespace, pod, workload, interface, flows, accepted and rejected flows, packets, last seen. A record is in the window when its span [start, end] overlaps [from, to).
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
--
-- Partition pruning on dt as in denied-flows. The pod is the deciding endpoint (the source of
-- an egress record, the destination of an ingress record), endpoint_eni = 'branch' says it had
-- a branch ENI, endpoint_interface on which veth (vlan… in strict mode). A pod that moved
-- between a node ENI and a branch ENI in the window is listed for its branch ENI's flows only.
SELECT
  namespace,
  pod,
  workload,
  interface,
  count(*) AS flows,
  sum(CASE WHEN action = 'ACCEPT' THEN 1 ELSE 0 END) AS accepted,
  sum(CASE WHEN action = 'REJECT' THEN 1 ELSE 0 END) AS rejected,
  sum(packets) AS packets,
  max("end") AS last_seen
FROM (
  SELECT
    CASE WHEN flow_direction = 'egress' THEN src_namespace ELSE dst_namespace END AS namespace,
    CASE WHEN flow_direction = 'egress' THEN src_pod ELSE dst_pod END AS pod,
    CASE WHEN flow_direction = 'egress' THEN src_workload ELSE dst_workload END AS workload,
    endpoint_interface AS interface,
    action,
    packets,
    "end"
  FROM flows
  WHERE dt >= date_format(from_unixtime(? - 3600), '%Y-%m-%d')
    AND dt <= date_format(from_unixtime(?), '%Y-%m-%d')
    AND "end" >= ?
    AND "start" < ?
    AND log_status = 'OK'
    AND endpoint_eni = 'branch'
) AS branch
GROUP BY namespace, pod, workload, interface
ORDER BY namespace, pod, interface
