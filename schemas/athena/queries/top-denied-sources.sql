-- name: top-denied-sources
-- description: The sources with the most dropped packets (action REJECT) in a time window, most first: pod (or address outside the cluster), flows, packets, bytes, distinct destinations, first and last seen. A record is in the window when its span [start, end] overlaps [from, to).
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: limit bigint how many sources to return, at most
--
-- Partition pruning on dt as in denied-flows. A source is a pod with its address, or an
-- address alone when it is not a pod of the cluster (the pod columns are null). Athena takes
-- `?` only in WHERE clauses, so the limit is a filter on the rank rather than LIMIT ?.
SELECT
  rank,
  src_namespace,
  src_pod,
  src_workload,
  srcaddr,
  flows,
  packets,
  bytes,
  destinations,
  first_seen,
  last_seen
FROM (
  SELECT
    row_number() OVER (
      ORDER BY sum(packets) DESC, count(*) DESC, src_namespace, src_pod, srcaddr
    ) AS rank,
    src_namespace,
    src_pod,
    src_workload,
    srcaddr,
    count(*) AS flows,
    sum(packets) AS packets,
    sum(bytes) AS bytes,
    count(DISTINCT dstaddr) AS destinations,
    min("start") AS first_seen,
    max("end") AS last_seen
  FROM flows
  WHERE dt >= date_format(from_unixtime(? - 3600), '%Y-%m-%d')
    AND dt <= date_format(from_unixtime(?), '%Y-%m-%d')
    AND "end" >= ?
    AND "start" < ?
    AND log_status = 'OK'
    AND action = 'REJECT'
  GROUP BY src_namespace, src_pod, src_workload, srcaddr
) AS ranked
WHERE rank <= ?
ORDER BY rank
