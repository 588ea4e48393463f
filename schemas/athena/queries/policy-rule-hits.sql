-- name: policy-rule-hits
-- description: How often each NetworkPolicy rule allowed a flow in a time window (verdict_reason allowed-by-rule): policy namespace and name, direction, rule index, flows, packets, bytes, first and last seen. Rules with no hit do not appear. A record is in the window when its span [start, end] overlaps [from, to).
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
--
-- Partition pruning on dt as in denied-flows. flows counts flow records (one per flow and
-- aggregation window); decisions counts the probe's flow events they aggregate (new
-- connections of that flow). Audit-mode endpoints decide by rules too: enforcement_mode is
-- not a grouping key because a rule allows the same way in both modes.
SELECT
  policy_namespace,
  policy_name,
  flow_direction,
  policy_rule,
  count(*) AS flows,
  sum(events) AS decisions,
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
  AND verdict_reason = 'allowed-by-rule'
GROUP BY policy_namespace, policy_name, flow_direction, policy_rule
ORDER BY policy_namespace, policy_name, flow_direction, policy_rule
