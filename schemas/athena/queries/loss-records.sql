-- name: loss-records
-- description: The loss records (log_status SKIPDATA) whose span overlaps a time window, oldest first: where events were lost (loss_source), how many (skipped_events, null when unknown), the span's start and end, the node. Without a loss record overlapping the window, the flow records of that window are complete.
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
-- param: from bigint window start, epoch seconds, inclusive
-- param: to bigint window end, epoch seconds, exclusive
--
-- Partition pruning on dt from the day of (from - 7 days) to the day of to: the collector
-- files each record under the day of its start, and a loss span can start long before the
-- window (a collector-restart record covers the time the collector was down). Spans that
-- began more than 7 days before the window are not found.
SELECT
  "start",
  "end",
  loss_source,
  skipped_events,
  node,
  cluster
FROM flows
WHERE dt >= date_format(from_unixtime(? - 604800), '%Y-%m-%d')
  AND dt <= date_format(from_unixtime(?), '%Y-%m-%d')
  AND "end" >= ?
  AND "start" < ?
  AND log_status = 'SKIPDATA'
ORDER BY "start", node, loss_source
