# The flow log's layout in S3, the Athena table that reads it, and the one policy that may write
# it: computed from names only, with no provider, so that the tests evaluate exactly what the
# other modules create (terraform/tests/test_terraform.py runs `terraform apply` on it offline).
#
# Data path: a node collector writes
#   s3://<bucket>/<prefix>/cluster=<cluster>/dt=YYYY-MM-DD/hour=HH/<node>-<ts>-<seq>.parquet
# with the role whose policy is `agent_policy_json[cluster]`; Athena reads the same keys through
# the Glue table defined by `columns`, `partition_keys` and `table_parameters` (partition
# projection: no crawler, no ADD PARTITION).

locals {
  # The table's columns, in file order: schemas/athena/flows.ddl.sql, which
  # schemas/tests/athena_ddl.rs holds to the record (schemas/src/record.rs COLUMNS).
  # terraform/tests/test_terraform.py fails when this list and the DDL differ. `cluster` is a
  # column of the files too but only a partition key here: Athena refuses a column named like a
  # partition key (the DDL's header explains it).
  columns = [
    { name = "version", type = "int" },
    { name = "srcaddr", type = "string" },
    { name = "dstaddr", type = "string" },
    { name = "srcport", type = "int" },
    { name = "dstport", type = "int" },
    { name = "protocol", type = "int" },
    { name = "packets", type = "bigint" },
    { name = "bytes", type = "bigint" },
    { name = "start", type = "bigint" },
    { name = "end", type = "bigint" },
    { name = "action", type = "string" },
    { name = "log_status", type = "string" },
    { name = "flow_direction", type = "string" },
    { name = "tcp_flags", type = "int" },
    { name = "icmp_type", type = "int" },
    { name = "icmp_code", type = "int" },
    { name = "src_namespace", type = "string" },
    { name = "src_pod", type = "string" },
    { name = "src_workload", type = "string" },
    { name = "src_labels", type = "map<string,string>" },
    { name = "dst_namespace", type = "string" },
    { name = "dst_pod", type = "string" },
    { name = "dst_workload", type = "string" },
    { name = "dst_labels", type = "map<string,string>" },
    { name = "verdict", type = "string" },
    { name = "verdict_reason", type = "string" },
    { name = "policy_namespace", type = "string" },
    { name = "policy_name", type = "string" },
    { name = "policy_rule", type = "int" },
    { name = "enforcement_mode", type = "string" },
    { name = "events", type = "bigint" },
    { name = "skipped_events", type = "bigint" },
    { name = "loss_source", type = "string" },
    { name = "node", type = "string" },
    { name = "isolation_action", type = "string" },
    { name = "isolation_actor", type = "string" },
    { name = "isolation_reason", type = "string" },
    { name = "isolation_detail", type = "string" },
    { name = "svc_namespace", type = "string" },
    { name = "svc_name", type = "string" },
    { name = "svc_addr", type = "string" },
    { name = "svc_port", type = "int" },
    { name = "endpoint_interface", type = "string" },
    { name = "endpoint_eni", type = "string" },
    { name = "policy_tier", type = "string" },
    { name = "policy_kind", type = "string" },
    { name = "policy_action", type = "string" },
    { name = "policy_version", type = "string" },
    { name = "isolating_policies", type = "array<string>" },
  ]

  partition_keys = [
    { name = "cluster", type = "string" },
    { name = "dt", type = "string" },
    { name = "hour", type = "string" },
  ]

  # "<prefix>/" or "": where cluster=… starts.
  root           = var.prefix == "" ? "" : "${var.prefix}/"
  bucket_arn     = "arn:${var.partition}:s3:::${var.bucket}"
  table_location = "s3://${var.bucket}/${local.root}"

  # The DDL's TBLPROPERTIES, value for value. `$${…}` is a literal `${…}` that Athena fills.
  table_parameters = {
    "classification"              = "parquet"
    "projection.enabled"          = "true"
    "projection.cluster.type"     = "enum"
    "projection.cluster.values"   = join(",", var.clusters)
    "projection.dt.type"          = "date"
    "projection.dt.format"        = "yyyy-MM-dd"
    "projection.dt.range"         = "${var.partition_start},NOW"
    "projection.dt.interval"      = "1"
    "projection.dt.interval.unit" = "DAYS"
    "projection.hour.type"        = "integer"
    "projection.hour.range"       = "0,23"
    "projection.hour.digits"      = "2"
    "storage.location.template"   = "${local.table_location}cluster=$${cluster}/dt=$${dt}/hour=$${hour}/"
  }

  cluster_prefixes = { for c in var.clusters : c => "${local.root}cluster=${c}/" }
  # Where each cluster's collectors write their signed digests (docs/digests.md).
  digest_prefixes = { for c in var.clusters : c => "${local.root}_digests/cluster=${c}/" }

  # What no agent may ever do to the flow log, whatever else its role is given: delete an
  # object or a version, shorten or bypass a retention, lift or set a legal hold, or change the
  # bucket's Object Lock, lifecycle, versioning or policy. An explicit Deny outranks any Allow.
  agent_denied_actions = [
    "s3:BypassGovernanceRetention",
    "s3:DeleteBucket",
    "s3:DeleteBucketPolicy",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:PutBucketObjectLockConfiguration",
    "s3:PutBucketPolicy",
    "s3:PutBucketVersioning",
    "s3:PutLifecycleConfiguration",
    "s3:PutObjectLegalHold",
    "s3:PutObjectRetention",
  ]

  # What a cluster's collectors may do, and nothing more:
  # - s3:PutObject on their own cluster's keys and its digests' (`_digests/cluster=<c>/`):
  #   PutObject and, for files from the multipart threshold on, CreateMultipartUpload,
  #   UploadPart and CompleteMultipartUpload, which S3 authorizes as s3:PutObject;
  # - s3:AbortMultipartUpload on the same keys: the sink aborts a failed multipart upload so
  #   that no parts linger (collector/src/sink/s3.rs);
  # - kms:GenerateDataKey on the bucket's key, for S3's calls only: the data key of every
  #   object (or of the bucket, with S3 Bucket Keys);
  # - kms:Decrypt on the same key, for S3's calls only: S3 decrypts the upload's data key to
  #   encrypt each part of a multipart upload and to complete it ("Multipart upload API and
  #   permissions", S3 User Guide). Single PutObject never needs it.
  # No read, list, delete, tagging, ACL or retention action: a node cannot see, change or
  # remove what it or any other node wrote; and an explicit Deny of every deleting or
  # retention-shortening action on the whole bucket (agent_denied_actions), so that no other
  # policy given to the role can open them. (Signing the digests is granted by the signing
  # key's own policy: the digest-signing-key module.)
  agent_policy_json = {
    for c, key_prefix in local.cluster_prefixes : c => jsonencode({
      Version = "2012-10-17"
      Statement = [
        {
          Sid      = "WriteOwnClusterFlowRecords"
          Effect   = "Allow"
          Action   = ["s3:PutObject", "s3:AbortMultipartUpload"]
          Resource = ["${local.bucket_arn}/${key_prefix}*", "${local.bucket_arn}/${local.digest_prefixes[c]}*"]
        },
        {
          Sid      = "EncryptFlowRecordsThroughS3"
          Effect   = "Allow"
          Action   = ["kms:GenerateDataKey", "kms:Decrypt"]
          Resource = [var.kms_key_arn]
          Condition = {
            StringEquals = {
              "kms:ViaService" = "s3.${var.region}.${var.dns_suffix}"
            }
            # S3's encryption context is the bucket's ARN with S3 Bucket Keys, the object's
            # ARN without: either way, only this cluster's records in this bucket.
            StringLike = {
              "kms:EncryptionContext:aws:s3:arn" = [local.bucket_arn, "${local.bucket_arn}/${key_prefix}*", "${local.bucket_arn}/${local.digest_prefixes[c]}*"]
            }
          }
        },
        {
          Sid      = "NeverDeleteOrShortenRetention"
          Effect   = "Deny"
          Action   = local.agent_denied_actions
          Resource = [local.bucket_arn, "${local.bucket_arn}/*"]
        },
      ]
    })
  }

  # The collector's `sink` setting (collector/src/config.rs S3Config), the same for every
  # cluster: objects encrypted with the bucket's key, sent with the header the bucket policy
  # asks for.
  collector_sink = {
    kind   = "s3"
    region = var.region
    bucket = var.bucket
    prefix = var.prefix
    sse = {
      kind   = "kms"
      key_id = var.kms_key_arn
    }
  }
}
