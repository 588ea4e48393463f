# One private S3 bucket whose every object is encrypted with one KMS key, reachable over TLS
# only, versioned, with a lifecycle and, when asked, Object Lock. The flow log lives in one (its
# records are the evidence of what the cluster did), Athena's query results in another.
#
# What a request meets, in order: the public access block and disabled ACLs (no public or
# cross-account grant can take effect), then the bucket policy (TLS 1.2+ only; a PutObject
# that asks for any encryption other than SSE-KMS with this bucket's key, or for SSE-C, is
# refused), then default encryption (a PutObject without an encryption header is encrypted
# with the same key, so no object is ever stored otherwise), then Object Lock's default
# retention for the new version.
#
# Why the policy does not also refuse a PutObject that carries no encryption header: S3
# authorizes UploadPart as s3:PutObject, and UploadPart never carries the header, so that
# rule would refuse every multipart upload (boto/botocore#471). Default encryption makes such
# an object SSE-KMS with this key all the same.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  create_key  = var.kms_key_arn == null
  kms_key_arn = local.create_key ? aws_kms_key.this[0].arn : var.kms_key_arn
}

resource "aws_kms_key" "this" {
  count = local.create_key ? 1 : 0

  description             = "SSE-KMS key of the S3 bucket ${var.name}"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_key_deletion_window_days
  # The account's IAM policies decide who uses the key (the agents' role, Athena's users):
  # the key policy only delegates to the account, as KMS's default key policy does.
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "DelegateToAccountIam"
      Effect    = "Allow"
      Principal = { AWS = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root" }
      Action    = "kms:*"
      Resource  = "*"
    }]
  })
  tags = var.tags
}

resource "aws_kms_alias" "this" {
  count = local.create_key ? 1 : 0

  # Alias names have no dots; bucket names may.
  name          = "alias/s3-${replace(var.name, ".", "-")}"
  target_key_id = aws_kms_key.this[0].key_id
}

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice of the account (a second region, its own key and role); this module keeps one region.
  #checkov:skip=CKV2_AWS_62:Nothing consumes object-created events: Athena reads the keys through partition projection.
  #checkov:skip=CKV_AWS_18:Access logging needs a logging bucket the organization owns; it is on when access_log_target is set (aws_s3_bucket_logging below).
  bucket = var.name
  # Object Lock exists only on buckets created with it.
  object_lock_enabled = var.object_lock != null
  tags                = var.tags
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    # ACLs are disabled: the bucket's account owns every object, whoever wrote it.
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket = aws_s3_bucket.this.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = local.kms_key_arn
    }
    # One data key per bucket and period instead of one KMS call per object.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_object_lock_configuration" "this" {
  count = var.object_lock == null ? 0 : 1

  bucket = aws_s3_bucket.this.id

  rule {
    default_retention {
      mode = var.object_lock.mode
      days = var.object_lock.retention_days
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    id     = "records"
    status = "Enabled"

    # Every object of the bucket.
    filter {}

    dynamic "transition" {
      for_each = var.storage_lifecycle.transition_days == 0 ? [] : [var.storage_lifecycle]
      content {
        days          = transition.value.transition_days
        storage_class = transition.value.transition_storage_class
      }
    }

    dynamic "expiration" {
      for_each = var.storage_lifecycle.expiration_days == 0 ? [] : [var.storage_lifecycle]
      content {
        days = expiration.value.expiration_days
      }
    }

    noncurrent_version_expiration {
      noncurrent_days = var.storage_lifecycle.noncurrent_expiration_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = var.storage_lifecycle.abort_incomplete_multipart_upload_days
    }
  }

  rule {
    id     = "delete-markers"
    status = "Enabled"

    filter {}

    # Removes a delete marker once no version is left behind it.
    expiration {
      expired_object_delete_marker = true
    }
  }

  # A lifecycle that expires versions must not race the versioning it relies on.
  depends_on = [aws_s3_bucket_versioning.this]
}

locals {
  bucket_and_objects = [aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"]
  objects            = ["${aws_s3_bucket.this.arn}/*"]

  # What the bucket policy refuses to everyone: one statement each, Deny when the condition
  # holds. The *IfExists tests let a request without the header through (see the top).
  refusals = [
    { sid = "DenyInsecureTransport", actions = ["s3:*"], resources = local.bucket_and_objects, test = "Bool", variable = "aws:SecureTransport", values = ["false"] },
    { sid = "DenyOutdatedTls", actions = ["s3:*"], resources = local.bucket_and_objects, test = "NumericLessThan", variable = "s3:TlsVersion", values = ["1.2"] },
    { sid = "DenyOtherEncryption", actions = ["s3:PutObject"], resources = local.objects, test = "StringNotEqualsIfExists", variable = "s3:x-amz-server-side-encryption", values = ["aws:kms"] },
    { sid = "DenyOtherKmsKey", actions = ["s3:PutObject"], resources = local.objects, test = "StringNotEqualsIfExists", variable = "s3:x-amz-server-side-encryption-aws-kms-key-id", values = [local.kms_key_arn] },
    { sid = "DenyCustomerProvidedKeys", actions = ["s3:PutObject"], resources = local.objects, test = "Null", variable = "s3:x-amz-server-side-encryption-customer-algorithm", values = ["false"] },
  ]
}

data "aws_iam_policy_document" "bucket" {
  dynamic "statement" {
    for_each = local.refusals
    content {
      sid       = statement.value.sid
      effect    = "Deny"
      actions   = statement.value.actions
      resources = statement.value.resources

      principals {
        type        = "*"
        identifiers = ["*"]
      }

      condition {
        test     = statement.value.test
        variable = statement.value.variable
        values   = statement.value.values
      }
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.bucket.json

  # A policy is refused while the public access block is being changed.
  depends_on = [aws_s3_bucket_public_access_block.this]
}

resource "aws_s3_bucket_logging" "this" {
  count = var.access_log_target == null ? 0 : 1

  bucket        = aws_s3_bucket.this.id
  target_bucket = var.access_log_target.bucket
  target_prefix = var.access_log_target.prefix
}
