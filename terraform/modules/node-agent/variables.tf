variable "cluster_name" {
  description = "Name of the EKS cluster; also the agents' `cluster` setting, the first partition key of every flow record."
  type        = string

  validation {
    condition     = can(regex("^[0-9A-Za-z][0-9A-Za-z_-]{0,99}$", var.cluster_name))
    error_message = "cluster_name: an EKS cluster name (letters, digits, '-' and '_', up to 100 characters, starting with a letter or digit)."
  }
}

variable "namespace" {
  description = "Namespace of the Helm release (kube-system, next to the VPC CNI's aws-node)."
  type        = string
  default     = "kube-system"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace: a Kubernetes namespace name (RFC 1123 label)."
  }
}

variable "release_name" {
  description = "Name of the Helm release. Never rename an installed release: a second DaemonSet would start next to the first (deploy/README.md)."
  type        = string
  default     = "tollgate"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,51}[a-z0-9])?$", var.release_name))
    error_message = "release_name: a Helm release name (lowercase letters, digits and '-', at most 53 characters)."
  }
}

variable "service_account" {
  description = "Name of the agents' ServiceAccount; the agent-identity module's service_account."
  type        = string
  default     = "tollgate"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$", var.service_account))
    error_message = "service_account: a Kubernetes object name (RFC 1123 subdomain)."
  }
}

variable "service_account_role_arn" {
  description = "IRSA: the role ARN written on the ServiceAccount (the agent-identity module's service_account_role_arn); empty with EKS Pod Identity."
  type        = string
  default     = ""

  validation {
    condition     = var.service_account_role_arn == "" || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$", var.service_account_role_arn))
    error_message = "service_account_role_arn: empty, or the ARN of an IAM role."
  }
}

variable "chart_path" {
  description = "Path of the tollgate Helm chart; null: this repository's deploy/helm/tollgate."
  type        = string
  default     = null
}

variable "image" {
  description = "The agent's image: a repository holding an image with the `tollgate` binary on its PATH (none is published yet), and its tag (empty: the chart's appVersion)."
  type = object({
    repository = string
    tag        = optional(string, "")
  })

  validation {
    condition     = length(var.image.repository) > 0
    error_message = "image.repository: the repository of the agent's image, for example 123456789012.dkr.ecr.eu-west-1.amazonaws.com/tollgate."
  }
}

variable "collector_sink" {
  description = "The collectors' sink setting: the flow-log-layout module's collector_sink (S3 bucket, region, prefix, SSE-KMS key)."
  type = object({
    kind   = string
    region = string
    bucket = string
    prefix = string
    sse = object({
      kind   = string
      key_id = string
    })
  })
}

variable "flow_mode" {
  description = "Which flows the collectors record: `all`, or `denied` only (denials and audit-mode would-be denials; loss records always)."
  type        = string
  default     = "all"

  validation {
    condition     = contains(["all", "denied"], var.flow_mode)
    error_message = "flow_mode: all or denied."
  }
}

variable "enforcement" {
  description = "`strict`: a pod's traffic is denied until its rules are programmed (no allow window at pod start); `standard`: traffic of an address that is no known endpoint passes."
  type        = string
  default     = "strict"

  validation {
    condition     = contains(["strict", "standard"], var.enforcement)
    error_message = "enforcement: strict or standard."
  }
}

variable "node_ingress" {
  description = "`allow`: the node's own addresses reach its pods whatever ingress policy says (kubelet probes), as the NetworkPolicy API requires; `policy`: ingress policy decides them like any other peer."
  type        = string
  default     = "allow"

  validation {
    condition     = contains(["allow", "policy"], var.node_ingress)
    error_message = "node_ingress: allow or policy."
  }
}

variable "digest_signing" {
  description = "The key that signs the collectors' digests: the digest-signing-key module's collector_signing (KMS key ARN, region, public key PEM). Null: each node signs with a local Ed25519 key in its spool (docs/digests.md)."
  type = object({
    key_id         = string
    region         = string
    public_key_pem = string
  })
  default = null
}

variable "security_lake" {
  description = "The collectors' Amazon Security Lake output: the security-lake-source module's collector_security_lake (source, region and account partitions, the Security Lake bucket as an S3 sink). Null: none (docs/security-lake.md)."
  type = object({
    source_name = string
    region      = string
    account_id  = string
    sink = object({
      kind   = string
      region = string
      bucket = string
      prefix = string
    })
  })
  default = null
}

variable "extra_values" {
  description = "More Helm values, as YAML documents applied after the module's own (resources, tolerations, otlp_endpoint…); deploy/helm/tollgate/values.yaml documents each."
  type        = list(string)
  default     = []
}

variable "helm_timeout_seconds" {
  description = "How long Terraform waits for every agent to be ready (each node's endpoints programmed) before the release counts as failed."
  type        = number
  default     = 900

  validation {
    condition     = var.helm_timeout_seconds >= 60
    error_message = "helm_timeout_seconds: at least 60."
  }
}

variable "manage_vpc_cni_addon" {
  description = "Whether this module manages the cluster's vpc-cni EKS add-on, to keep the VPC CNI's own network-policy agent from enforcing. False when another configuration manages the add-on: give it the vpc_cni_configuration output's values."
  type        = bool
  default     = true
}

variable "vpc_cni_addon_version" {
  description = "Version of the vpc-cni add-on (v1.14 or later, the first with enableNetworkPolicy); null: the add-on's default for the cluster's Kubernetes version."
  type        = string
  default     = null

  validation {
    condition     = var.vpc_cni_addon_version == null || can(regex("^v1\\.(1[4-9]|[2-9][0-9])\\.[0-9]+-eksbuild\\.[0-9]+$", var.vpc_cni_addon_version))
    error_message = "vpc_cni_addon_version: null or an add-on version of v1.14 or later, such as v1.20.4-eksbuild.1."
  }
}

variable "vpc_cni_configuration_json" {
  description = "The vpc-cni add-on's other configuration values, as a JSON object (its schema: aws eks describe-addon-configuration --addon-name vpc-cni). enableNetworkPolicy is always set to \"false\" over it."
  type        = string
  default     = "{}"

  validation {
    condition     = can(keys(jsondecode(var.vpc_cni_configuration_json)))
    error_message = "vpc_cni_configuration_json: a JSON object."
  }
}

variable "tags" {
  description = "Tags of the AWS resources the module creates (the add-on)."
  type        = map(string)
  default     = {}
}
