variable "bucket" {
  description = "Name of the S3 bucket the node collectors write to (their sink.bucket)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket))
    error_message = "bucket: an S3 bucket name, 3 to 63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit."
  }
}

variable "prefix" {
  description = "Key prefix of the flow records inside the bucket (the collectors' sink.prefix), without leading or trailing '/'; empty puts cluster=… at the bucket's root."
  type        = string
  default     = "tollgate"

  validation {
    condition     = var.prefix == "" || can(regex("^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$", var.prefix))
    error_message = "prefix: path segments of S3's safe characters separated by single '/', with no '/' at either end."
  }
}

variable "clusters" {
  description = "Every cluster whose collectors write to the bucket (each collector's `cluster` setting). Athena's partition projection lists them: a cluster missing here is invisible to queries."
  type        = list(string)

  validation {
    condition     = length(var.clusters) > 0 && alltrue([for c in var.clusters : can(regex("^[0-9A-Za-z][0-9A-Za-z_-]{0,99}$", c))])
    error_message = "clusters: at least one name, each an EKS cluster name (letters, digits, '-' and '_', up to 100 characters, starting with a letter or digit)."
  }

  validation {
    condition     = length(distinct(var.clusters)) == length(var.clusters)
    error_message = "clusters: a name appears twice."
  }
}

variable "partition_start" {
  description = "First UTC day with flow records, YYYY-MM-DD. Athena's projection of the dt partition starts here; earlier days are never read."
  type        = string

  validation {
    condition     = can(formatdate("YYYY-MM-DD", "${var.partition_start}T00:00:00Z")) && can(regex("^[0-9]{4}-[0-9]{2}-[0-9]{2}$", var.partition_start))
    error_message = "partition_start: a date written YYYY-MM-DD."
  }
}

variable "region" {
  description = "AWS region of the bucket and the KMS key."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region: an AWS region name such as eu-west-1."
  }
}

variable "kms_key_arn" {
  description = "ARN of the KMS key that encrypts the flow records (SSE-KMS)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", var.kms_key_arn))
    error_message = "kms_key_arn: the ARN of a KMS key (arn:<partition>:kms:<region>:<account>:key/<id>), not an alias."
  }
}

variable "partition" {
  description = "AWS partition of the ARNs (aws, aws-cn, aws-us-gov): the aws_partition data source's partition."
  type        = string
  default     = "aws"

  validation {
    condition     = contains(["aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-iso-b", "aws-iso-e", "aws-iso-f", "aws-eusc"], var.partition)
    error_message = "partition: one of aws, aws-cn, aws-us-gov, aws-iso, aws-iso-b, aws-iso-e, aws-iso-f, aws-eusc."
  }
}

variable "dns_suffix" {
  description = "DNS suffix of the partition's service endpoints (amazonaws.com, amazonaws.com.cn): the aws_partition data source's dns_suffix. The agent's KMS permission holds only for calls S3 makes through s3.<region>.<dns_suffix>."
  type        = string
  default     = "amazonaws.com"

  validation {
    condition     = can(regex("^[a-z0-9.-]+$", var.dns_suffix))
    error_message = "dns_suffix: a DNS domain such as amazonaws.com."
  }
}
