variable "source_name" {
  description = "The custom source's name: its prefix ext/<source_name>/ in the Security Lake bucket, and the collectors' security_lake.source_name. Security Lake allows at most 20 characters (its provider role's name holds it)."
  type        = string
  default     = "tollgate"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,20}$", var.source_name))
    error_message = "source_name: 1 to 20 letters, digits, '_' and '-'."
  }
}

variable "source_version" {
  description = "The custom source's version, as Security Lake records it."
  type        = string
  default     = "1.0"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,32}$", var.source_version))
    error_message = "source_version: 1 to 32 letters, digits, '.', '_' and '-'."
  }
}

variable "external_id" {
  description = "The external ID Security Lake's provider role asks of whoever assumes it (provider_principal)."
  type        = string

  validation {
    condition     = length(var.external_id) >= 2 && length(var.external_id) <= 1224 && can(regex("^[A-Za-z0-9+=,.@:/_-]+$", var.external_id))
    error_message = "external_id: 2 to 1224 letters, digits and +=,.@:/_-."
  }
}

variable "provider_principal" {
  description = "The account (12 digits) Security Lake's provider role trusts; null: this account, the agents'."
  type        = string
  default     = null

  validation {
    condition     = var.provider_principal == null || can(regex("^[0-9]{12}$", var.provider_principal))
    error_message = "provider_principal: an AWS account ID (12 digits)."
  }
}

variable "account_id" {
  description = "The accountId= partition the collectors write (their security_lake.account_id); null: this account."
  type        = string
  default     = null

  validation {
    condition     = var.account_id == null || can(regex("^[0-9]{12}$", var.account_id))
    error_message = "account_id: an AWS account ID (12 digits)."
  }
}

variable "agent_role_name" {
  description = "Name of the agents' IAM role (the agent-identity module's role_name): it gets write access to its partitions of the source and nothing else."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9+=,.@_-]{1,64}$", var.agent_role_name))
    error_message = "agent_role_name: an IAM role name, up to 64 characters."
  }
}

variable "kms_key_arn" {
  description = "ARN of the KMS key that encrypts the Security Lake bucket, when it is a customer key: the agents may then encrypt with it. null: SSE-S3."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", var.kms_key_arn))
    error_message = "kms_key_arn: the ARN of a KMS key, not an alias."
  }
}

variable "tags" {
  description = "Tags of the crawler's role."
  type        = map(string)
  default     = {}
}
