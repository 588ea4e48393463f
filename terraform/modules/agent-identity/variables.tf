variable "cluster_name" {
  description = "Name of the EKS cluster the agents run in."
  type        = string

  validation {
    condition     = can(regex("^[0-9A-Za-z][0-9A-Za-z_-]{0,99}$", var.cluster_name))
    error_message = "cluster_name: an EKS cluster name (letters, digits, '-' and '_', up to 100 characters, starting with a letter or digit)."
  }
}

variable "namespace" {
  description = "Namespace of the agents' ServiceAccount (the Helm release's namespace)."
  type        = string
  default     = "kube-system"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace: a Kubernetes namespace name (RFC 1123 label)."
  }
}

variable "service_account" {
  description = "Name of the agents' ServiceAccount (the chart's serviceAccount.name, or the release's full name)."
  type        = string
  default     = "tollgate"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$", var.service_account))
    error_message = "service_account: a Kubernetes object name (RFC 1123 subdomain)."
  }
}

variable "mode" {
  description = "How the agents' pods get the role: `pod-identity` (an EKS Pod Identity association; the cluster needs the eks-pod-identity-agent add-on) or `irsa` (IAM roles for service accounts through the cluster's OIDC provider; the ServiceAccount carries the role's ARN)."
  type        = string
  default     = "pod-identity"

  validation {
    condition     = contains(["pod-identity", "irsa"], var.mode)
    error_message = "mode: pod-identity or irsa."
  }
}

variable "oidc_provider_arn" {
  description = "With mode = irsa: ARN of the cluster's IAM OIDC provider (arn:aws:iam::<account>:oidc-provider/oidc.eks.<region>.amazonaws.com/id/<id>). Unused with pod-identity."
  type        = string
  default     = null

  validation {
    condition     = var.mode != "irsa" || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:oidc-provider/.+$", var.oidc_provider_arn))
    error_message = "oidc_provider_arn: with mode = irsa, the ARN of the cluster's IAM OIDC provider."
  }
}

variable "policy_json" {
  description = "The agents' only permissions, as an IAM policy document: the flow-log-layout module's agent_policy_json for this cluster."
  type        = string

  validation {
    condition     = can(jsondecode(var.policy_json).Statement)
    error_message = "policy_json: an IAM policy document in JSON with a Statement."
  }
}

variable "role_name" {
  description = "Name of the IAM role; null: tollgate-agent-<cluster_name>."
  type        = string
  default     = null

  validation {
    condition     = var.role_name == null || can(regex("^[A-Za-z0-9+=,.@_-]{1,64}$", var.role_name))
    error_message = "role_name: up to 64 of IAM's role-name characters (letters, digits and +=,.@_-)."
  }
}

variable "permissions_boundary_arn" {
  description = "ARN of an IAM permissions boundary the organization requires on roles; null: none."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags of every resource the module creates."
  type        = map(string)
  default     = {}
}

variable "manage_pod_identity_agent_addon" {
  description = "With mode = pod-identity: install the eks-pod-identity-agent EKS add-on, which hands pods their association's credentials. False when the cluster has it already (creating it again fails) or it is managed elsewhere."
  type        = bool
  default     = false
}
