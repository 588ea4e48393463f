-- name: isolation-records
-- description: The isolation records (log_status ISOLATION) in a time window, oldest first: when, quarantine or release, the pod (namespace, name, workload, address, labels), who (isolation_actor) and why (isolation_reason), the quarantine policy (policy_namespace and policy_name, policy_kind: a ClusterNetworkPolicy has no namespace; records of version 1 name a NetworkPolicy and no kind), and isolation_detail (JSON: the policy's uid and resource version, the quarantine label, the pod's uid, address and node, the policies in force).
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
--
-- An isolation record is an instant (start = end = the time of the quarantine or release), filed
-- under the dt of that time, so the days of the window bound dt. The pod is the record's
-- source: src_namespace, src_pod, src_workload, srcaddr, src_labels (as it was then).
SELECT
  "start",
  isolation_action,
  src_namespace,
  src_pod,
  src_workload,
  srcaddr,
  src_labels,
  isolation_actor,
  isolation_reason,
  policy_namespace,
  policy_name,
  policy_kind,
  isolation_detail,
  node,
  cluster
FROM flows
WHERE dt >= date_format(from_unixtime(?), '%Y-%m-%d')
  AND dt <= date_format(from_unixtime(?), '%Y-%m-%d')
  AND "end" >= ?
  AND "start" < ?
  AND log_status = 'ISOLATION'
ORDER BY "start", src_namespace, src_pod, isolation_action
