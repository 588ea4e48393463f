# tollgate as an Amazon Security Lake custom source (docs/security-lake.md): the source
# registered for OCSF Network Activity, the Glue crawler's role Security Lake needs for it, and
# the agents' write access to their own partitions of it and nothing else.
#
# Security Lake must be enabled in the region (aws_securitylake_data_lake) before this module
# is applied; its bucket is Security Lake's, found from the source's location.
#
# Who may do what:
# - the provider identity (provider_principal, with external_id) is what Security Lake trusts
#   in the provider role it creates (AmazonSecurityLake-Provider-<source>-<region>): for tools
#   that assume it. The collectors do not: they write with the agents' own role;
# - the agents' role: s3:PutObject (and aborting its own multipart uploads) under
#   ext/<source_name>/region=<region>/accountId=<account_id>/ only, the partition the
#   collectors' `security_lake` setting (collector_security_lake below) writes — no read, no
#   list, no delete, no other source's or account's prefix;
# - the crawler's role: Glue's service policy and reading the source's prefix.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

locals {
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.region
  account_id = coalesce(var.account_id, data.aws_caller_identity.current.account_id)
  principal  = coalesce(var.provider_principal, data.aws_caller_identity.current.account_id)

  # s3://aws-security-data-lake-<region>-<hash>/ext/<source>/…: the bucket is the first segment.
  location = aws_securitylake_custom_log_source.this.provider_details[0].location
  bucket   = regex("^s3://([^/]+)/", local.location)[0]

  # The collectors' partitions (collector/src/writer.rs, Layout::SecurityLake).
  agent_prefix = "ext/${var.source_name}/region=${local.region}/accountId=${local.account_id}/"

  agent_write_policy = {
    Version = "2012-10-17"
    Statement = concat(
      [{
        Sid      = "WriteOwnPartitionsOnly"
        Effect   = "Allow"
        Action   = ["s3:PutObject", "s3:AbortMultipartUpload"]
        Resource = "arn:${local.partition}:s3:::${local.bucket}/${local.agent_prefix}*"
      }],
      var.kms_key_arn == null ? [] : [{
        Sid      = "EncryptForTheLake"
        Effect   = "Allow"
        Action   = ["kms:GenerateDataKey", "kms:Decrypt"]
        Resource = var.kms_key_arn
      }],
    )
  }
}

resource "aws_iam_role" "crawler" {
  name = "tollgate-security-lake-crawler-${var.source_name}"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "glue.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = var.tags
}

resource "aws_iam_role_policy_attachment" "crawler_glue" {
  role       = aws_iam_role.crawler.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSGlueServiceRole"
}

resource "aws_iam_role_policy" "crawler_read" {
  name = "read-${var.source_name}"
  role = aws_iam_role.crawler.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "ReadTheSource"
      Effect   = "Allow"
      Action   = ["s3:GetObject", "s3:ListBucket"]
      Resource = ["arn:${local.partition}:s3:::${local.bucket}", "arn:${local.partition}:s3:::${local.bucket}/ext/${var.source_name}/*"]
    }]
  })
}

resource "aws_securitylake_custom_log_source" "this" {
  source_name    = var.source_name
  source_version = var.source_version
  # One OCSF class per source: tollgate writes Network Activity (4001) only.
  event_classes = ["NETWORK_ACTIVITY"]

  configuration {
    crawler_configuration {
      role_arn = aws_iam_role.crawler.arn
    }
    provider_identity {
      external_id = var.external_id
      principal   = local.principal
    }
  }
}

resource "aws_iam_role_policy" "agents_write" {
  name   = "tollgate-security-lake-${var.source_name}"
  role   = var.agent_role_name
  policy = jsonencode(local.agent_write_policy)
}
