-- name: ocsf-pod-flows
-- description: pod-flows on Amazon Security Lake: every flow of one pod that tollgate's custom source recorded in a time window, as source or destination, allowed and denied, oldest first, with the OCSF activity, action and disposition, the deciding NetworkPolicy rule (firewall_rule), the Service a flow was addressed to and the node. A record is in the window when its span [start_time, end_time] overlaps [from, to); OCSF times are epoch milliseconds.
-- param: namespace string namespace of the pod
-- param: pod string name of the pod
-- param: namespace string namespace of the pod
-- param: pod string name of the pod
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
--
-- Reads `ocsf_flows` (see ocsf-denied-flows). An endpoint held by a pod is named
-- `<namespace>/<pod>`; flows only (loss and isolation records are activity Other, 99).
SELECT
  time,
  start_time,
  end_time,
  activity_name,
  action,
  disposition,
  connection_info.direction AS direction,
  src_endpoint.name AS src_name,
  src_endpoint.ip AS src_ip,
  src_endpoint.port AS src_port,
  dst_endpoint.name AS dst_name,
  dst_endpoint.ip AS dst_ip,
  dst_endpoint.port AS dst_port,
  dst_endpoint.svc_name AS svc_name,
  connection_info.protocol_name AS protocol,
  connection_info.tcp_flags AS tcp_flags,
  traffic.packets AS packets,
  traffic.bytes AS bytes,
  firewall_rule.name AS policy,
  firewall_rule.condition AS policy_rule,
  unmapped['verdict'] AS verdict,
  unmapped['verdict_reason'] AS verdict_reason,
  unmapped['enforcement_mode'] AS enforcement_mode,
  unmapped['node'] AS node,
  unmapped['cluster'] AS cluster
FROM ocsf_flows
WHERE (
    src_endpoint.name = concat(?, '/', ?)
    OR dst_endpoint.name = concat(?, '/', ?)
  )
  AND eventday >= date_format(from_unixtime(? - 86400), '%Y%m%d')
  AND eventday <= date_format(from_unixtime(?), '%Y%m%d')
  AND end_time >= CAST(? AS bigint) * 1000
  AND start_time < CAST(? AS bigint) * 1000
  AND class_uid = 4001
  AND activity_id <> 99
ORDER BY time, src_endpoint.ip, src_endpoint.port, dst_endpoint.ip, dst_endpoint.port
