-- The Athena (Glue) table over the flow records the node collectors write to S3.
--
-- A Terraform templatefile: `${name}` is filled in by Terraform, `$${name}` is Terraform's
-- escape for a literal `${name}` that Athena itself reads (storage.location.template).
--   ${database}          Glue database of the table
--   ${bucket}            bucket the collectors write to (their sink.bucket)
--   ${prefix}            the collectors' sink.prefix followed by '/', or empty when that prefix
--                        is empty (e.g. `flows/`); the files live under
--                        s3://bucket/<prefix>cluster=…/dt=YYYY-MM-DD/hour=HH/
--   ${clusters}          comma-separated names of every cluster that writes here, no spaces
--                        (each collector's `cluster` setting)
--   ${projection_start}  first day with data, YYYY-MM-DD (UTC); earlier days are not read
--
-- Columns: every column of schemas/src/record.rs COLUMNS, in file order and with the same
-- types (schemas/tests/athena_ddl.rs checks it), except `cluster`. `cluster` is also a column
-- of the Parquet files, but Athena (Hive DDL) refuses a table column with the name of a
-- partition column ("partitioned columns don't exist within the table data itself, so if you
-- use a column name that has the same name as a column in the table itself, you get an
-- error", Athena's ALTER TABLE ADD PARTITION reference; Hive's SemanticException 10035
-- "Column repeated in partitioning columns"). So it is declared only as the first partition
-- key: queries see its value from the path, which the collector writes equal to the column,
-- and the copy inside the files is simply not read. Parquet columns are matched by name, so
-- columns appended to the record later are added here at the end of the column list.
--
-- Partition projection, so no crawler and no ALTER TABLE ADD PARTITION: Athena computes the
-- partitions from the properties below.
--   cluster  `enum` over ${clusters}. Not `injected`: an injected key makes Athena refuse every
--            query without a static equality on it (CONSTRAINT_VIOLATION), and the named
--            queries in queries/ look at all clusters at once. The cost is that a new cluster
--            must be added to the list (a Terraform variable) before its data is visible.
--   dt       `date`, yyyy-MM-dd, one partition per UTC day from ${projection_start} to NOW.
--   hour     `integer` 0–23 written with two digits (`06`), as the collector names it.
-- `start` and `end` are reserved words in Hive DDL (and `end` in Trino queries): every name
-- below is quoted with backticks, as Athena DDL wants; queries quote them as "start", "end".
CREATE EXTERNAL TABLE IF NOT EXISTS `${database}`.`flows` (
  `version` int,
  `srcaddr` string,
  `dstaddr` string,
  `srcport` int,
  `dstport` int,
  `protocol` int,
  `packets` bigint,
  `bytes` bigint,
  `start` bigint,
  `end` bigint,
  `action` string,
  `log_status` string,
  `flow_direction` string,
  `tcp_flags` int,
  `icmp_type` int,
  `icmp_code` int,
  `src_namespace` string,
  `src_pod` string,
  `src_workload` string,
  `src_labels` map<string,string>,
  `dst_namespace` string,
  `dst_pod` string,
  `dst_workload` string,
  `dst_labels` map<string,string>,
  `verdict` string,
  `verdict_reason` string,
  `policy_namespace` string,
  `policy_name` string,
  `policy_rule` int,
  `enforcement_mode` string,
  `events` bigint,
  `skipped_events` bigint,
  `loss_source` string,
  `node` string,
  `isolation_action` string,
  `isolation_actor` string,
  `isolation_reason` string,
  `isolation_detail` string,
  `svc_namespace` string,
  `svc_name` string,
  `svc_addr` string,
  `svc_port` int,
  `endpoint_interface` string,
  `endpoint_eni` string,
  `policy_tier` string,
  `policy_kind` string,
  `policy_action` string,
  `policy_version` string,
  `isolating_policies` array<string>
)
COMMENT 'tollgate flow records: one row per flow, verdict and aggregation window (column reference: schemas/src/record.rs)'
PARTITIONED BY (
  `cluster` string,
  `dt` string,
  `hour` string
)
STORED AS PARQUET
LOCATION 's3://${bucket}/${prefix}'
TBLPROPERTIES (
  'classification' = 'parquet',
  'projection.enabled' = 'true',
  'projection.cluster.type' = 'enum',
  'projection.cluster.values' = '${clusters}',
  'projection.dt.type' = 'date',
  'projection.dt.format' = 'yyyy-MM-dd',
  'projection.dt.range' = '${projection_start},NOW',
  'projection.dt.interval' = '1',
  'projection.dt.interval.unit' = 'DAYS',
  'projection.hour.type' = 'integer',
  'projection.hour.range' = '0,23',
  'projection.hour.digits' = '2',
  'storage.location.template' = 's3://${bucket}/${prefix}cluster=$${cluster}/dt=$${dt}/hour=$${hour}/'
)
