variable "name" {
  description = "What the key signs for (the cluster's name): its description and alias (alias/tollgate-digests-<name>)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,200}$", var.name))
    error_message = "name: letters, digits, '_' and '-' (an alias name), at most 200."
  }
}

variable "signer_role_arn" {
  description = "ARN of the agents' IAM role (the agent-identity module's role_arn): the only principal that may sign with the key."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$", var.signer_role_arn))
    error_message = "signer_role_arn: the ARN of an IAM role."
  }
}

variable "verifier_arns" {
  description = "ARNs of the principals that may read the public key and verify with KMS (auditors, the incident responders' role); `tollgate digest verify` needs only the public key, which the module also outputs."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.verifier_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/.+$", arn))])
    error_message = "verifier_arns: ARNs of IAM roles or users."
  }
}

variable "deletion_window_days" {
  description = "Days between the key's deletion being asked and done (7 to 30): once deleted, no digest it signed can be checked against KMS any more (the public key output still can)."
  type        = number
  default     = 30

  validation {
    condition     = var.deletion_window_days >= 7 && var.deletion_window_days <= 30
    error_message = "deletion_window_days: between 7 and 30."
  }
}

variable "tags" {
  description = "Tags of the key."
  type        = map(string)
  default     = {}
}
