-- name: ocsf-denied-flows
-- description: denied-flows on Amazon Security Lake: the flows tollgate's custom source recorded as refused (OCSF Network Activity, activity Refuse, action Denied) in a time window, oldest first, with both endpoints (name namespace/pod or Node/<node>, address, port), the Service a flow was addressed to, protocol, packets, bytes, the reason and the node. A record is in the window when its span [start_time, end_time] overlaps [from, to); OCSF times are epoch milliseconds.
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
--
-- Reads `ocsf_flows`: the terraform athena module saves this query with the custom source's
-- Glue table (security_lake_table) in its place. The collector files each record under the
-- eventDay of its own start (UTC, Security Lake's partitions are days), and a record spans at
-- most one aggregation window, so a record overlapping the window has eventDay between the day
-- of (from - 1 day) and the day of to.
SELECT
  time,
  start_time,
  end_time,
  connection_info.direction AS direction,
  src_endpoint.name AS src_name,
  src_endpoint.ip AS src_ip,
  src_endpoint.port AS src_port,
  dst_endpoint.name AS dst_name,
  dst_endpoint.ip AS dst_ip,
  dst_endpoint.port AS dst_port,
  dst_endpoint.svc_name AS svc_name,
  unmapped['svc_namespace'] AS svc_namespace,
  connection_info.protocol_name AS protocol,
  traffic.packets AS packets,
  traffic.bytes AS bytes,
  disposition,
  unmapped['verdict_reason'] AS verdict_reason,
  message,
  unmapped['node'] AS node,
  unmapped['cluster'] AS cluster
FROM ocsf_flows
WHERE eventday >= date_format(from_unixtime(? - 86400), '%Y%m%d')
  AND eventday <= date_format(from_unixtime(?), '%Y%m%d')
  AND end_time >= CAST(? AS bigint) * 1000
  AND start_time < CAST(? AS bigint) * 1000
  AND class_uid = 4001
  AND activity_id = 5
  AND action_id = 2
ORDER BY time, src_endpoint.ip, src_endpoint.port, dst_endpoint.ip, dst_endpoint.port
