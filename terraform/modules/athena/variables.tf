variable "database_name" {
  description = "Name of the Glue database that holds the `flows` table."
  type        = string
  default     = "tollgate"

  validation {
    condition     = can(regex("^[a-z0-9_]{1,255}$", var.database_name))
    error_message = "database_name: lowercase letters, digits and '_' (what Athena accepts unquoted), at most 255."
  }
}

variable "layout" {
  description = "The flow log's table definition: the flow-log-layout module's columns, partition_keys, table_location and table_parameters."
  type = object({
    columns          = list(object({ name = string, type = string }))
    partition_keys   = list(object({ name = string, type = string }))
    table_location   = string
    table_parameters = map(string)
  })

  validation {
    condition     = length(var.layout.columns) > 0 && [for k in var.layout.partition_keys : k.name] == ["cluster", "dt", "hour"]
    error_message = "layout: the flow-log-layout module's outputs (columns, and the partition keys cluster, dt, hour)."
  }
}

variable "workgroup_name" {
  description = "Name of the Athena workgroup for the flow log's queries."
  type        = string
  default     = "tollgate"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,128}$", var.workgroup_name))
    error_message = "workgroup_name: 1 to 128 letters, digits, '.', '_' and '-'."
  }
}

variable "results_bucket" {
  description = "Name of the bucket for query results (the encrypted-bucket module's name); results go under <workgroup_name>/."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.results_bucket))
    error_message = "results_bucket: an S3 bucket name."
  }
}

variable "results_kms_key_arn" {
  description = "ARN of the KMS key that encrypts query results (SSE-KMS): the results bucket's key."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", var.results_kms_key_arn))
    error_message = "results_kms_key_arn: the ARN of a KMS key, not an alias."
  }
}

variable "bytes_scanned_cutoff_per_query" {
  description = "Athena cancels a query of the workgroup once it has scanned this many bytes (at least 10 MiB). A day of a busy cluster's flow log is tens of MiB of Parquet; the default, 10 GiB, bounds a query that forgot its time window."
  type        = number
  default     = 10737418240

  validation {
    condition     = var.bytes_scanned_cutoff_per_query >= 10485760
    error_message = "bytes_scanned_cutoff_per_query: at least 10485760 (10 MiB), Athena's minimum."
  }
}

variable "queries_dir" {
  description = "Directory of the named queries (one Athena SQL file each, with a `-- name:` and a `-- description:` header line); null: this repository's schemas/athena/queries."
  type        = string
  default     = null
}

variable "security_lake_table" {
  description = "The Glue table of tollgate's Amazon Security Lake custom source, as `database.table` (Security Lake names them amazon_security_lake_glue_db_<region> and amazon_security_lake_table_<region>_ext_<source>…); the OCSF named queries read it. null: they are not saved."
  type        = string
  default     = null

  validation {
    condition     = var.security_lake_table == null || can(regex("^[a-z0-9_]{1,255}\\.[a-z0-9_]{1,255}$", var.security_lake_table))
    error_message = "security_lake_table: database.table, lowercase letters, digits and '_'."
  }
}

variable "tags" {
  description = "Tags of every resource the module creates."
  type        = map(string)
  default     = {}
}
