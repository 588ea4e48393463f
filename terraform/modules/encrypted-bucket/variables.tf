variable "name" {
  description = "Name of the bucket."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.name))
    error_message = "name: an S3 bucket name, 3 to 63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit."
  }
}

variable "kms_key_arn" {
  description = "ARN of an existing KMS key for SSE-KMS; null creates a key for this bucket (rotated yearly)."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", var.kms_key_arn))
    error_message = "kms_key_arn: the ARN of a KMS key (arn:<partition>:kms:<region>:<account>:key/<id>), not an alias."
  }
}

variable "kms_key_deletion_window_days" {
  description = "Days a created key waits between its deletion being asked and done (7 to 30)."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_key_deletion_window_days >= 7 && var.kms_key_deletion_window_days <= 30
    error_message = "kms_key_deletion_window_days: between 7 and 30."
  }
}

variable "storage_lifecycle" {
  description = "Lifecycle of every object: current versions move to transition_storage_class after transition_days (0: never) and expire after expiration_days (0: never); replaced or expired versions are deleted noncurrent_expiration_days later; unfinished multipart uploads are aborted after abort_incomplete_multipart_upload_days. (0, not null, means never: Terraform replaces a null attribute by its default.)"
  type = object({
    transition_days                        = optional(number, 30)
    transition_storage_class               = optional(string, "STANDARD_IA")
    expiration_days                        = optional(number, 400)
    noncurrent_expiration_days             = optional(number, 30)
    abort_incomplete_multipart_upload_days = optional(number, 1)
  })
  default = {}

  validation {
    # Athena reads objects of these classes directly; GLACIER and DEEP_ARCHIVE would need a
    # restore before every query.
    condition     = contains(["STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR"], var.storage_lifecycle.transition_storage_class)
    error_message = "storage_lifecycle.transition_storage_class: one of STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, GLACIER_IR (storage classes Athena reads without a restore)."
  }

  validation {
    condition     = var.storage_lifecycle.transition_days == 0 || !contains(["STANDARD_IA", "ONEZONE_IA"], var.storage_lifecycle.transition_storage_class) || var.storage_lifecycle.transition_days >= 30
    error_message = "storage_lifecycle.transition_days: S3 moves objects to STANDARD_IA or ONEZONE_IA only after at least 30 days."
  }

  validation {
    condition     = var.storage_lifecycle.expiration_days == 0 || var.storage_lifecycle.expiration_days > var.storage_lifecycle.transition_days
    error_message = "storage_lifecycle.expiration_days: after transition_days (or 0: never)."
  }

  validation {
    condition     = var.storage_lifecycle.transition_days >= 0 && var.storage_lifecycle.expiration_days >= 0 && var.storage_lifecycle.noncurrent_expiration_days >= 1 && var.storage_lifecycle.abort_incomplete_multipart_upload_days >= 1
    error_message = "storage_lifecycle: transition_days and expiration_days are 0 (never) or more, noncurrent_expiration_days and abort_incomplete_multipart_upload_days at least 1."
  }
}

variable "object_lock" {
  description = "S3 Object Lock for every object version of the bucket (records kept as evidence): mode GOVERNANCE (users with s3:BypassGovernanceRetention may still delete) or COMPLIANCE (nobody may, not even the account's root user, until the retention ends), for retention_days. Null: no lock. Object Lock can only be turned on when the bucket is created."
  type = object({
    mode           = string
    retention_days = number
  })
  default = null

  validation {
    condition     = var.object_lock == null || try(contains(["GOVERNANCE", "COMPLIANCE"], var.object_lock.mode), false)
    error_message = "object_lock.mode: GOVERNANCE or COMPLIANCE."
  }

  validation {
    condition     = var.object_lock == null || try(var.object_lock.retention_days >= 1 && var.object_lock.retention_days <= 36500, false)
    error_message = "object_lock.retention_days: between 1 and 36500."
  }

  validation {
    # A record that expires while locked is hidden behind a delete marker: still kept, no
    # longer queryable, which defeats keeping it as evidence.
    # try(…, true): without a lock there is nothing to check.
    condition     = var.storage_lifecycle.expiration_days == 0 || try(var.storage_lifecycle.expiration_days >= var.object_lock.retention_days, true)
    error_message = "object_lock.retention_days: longer than storage_lifecycle.expiration_days; a locked record would expire from queries while still retained."
  }
}

variable "access_log_target" {
  description = "Where S3 server access logs of this bucket go (an existing logging bucket and key prefix); null: no access logs."
  type = object({
    bucket = string
    prefix = string
  })
  default = null
}

variable "tags" {
  description = "Tags of every resource the module creates."
  type        = map(string)
  default     = {}
}
