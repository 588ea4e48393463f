# The identity of the node agents: one IAM role whose only permissions are the flow-log-layout
# module's agent policy for this cluster, assumable only by the agents' ServiceAccount.
#
# pod-identity: the role trusts the EKS Pod Identity service (pods.eks.amazonaws.com), and an
# association binds it to namespace/service_account of this cluster; the Pod Identity agent on
# each node hands the pod its credentials (aws-sdk's default chain finds them).
# irsa: the role trusts the cluster's OIDC provider for exactly
# system:serviceaccount:<namespace>:<service_account>; the chart writes the role's ARN on the
# ServiceAccount (serviceAccount.roleArn) and EKS injects a web identity token.

locals {
  role_name = coalesce(var.role_name, "tollgate-agent-${var.cluster_name}")
  # oidc.eks.<region>.amazonaws.com/id/<id>: the provider ARN's path, the condition keys' prefix.
  oidc_issuer = var.mode == "irsa" ? split("oidc-provider/", var.oidc_provider_arn)[1] : null

  # Only the chosen statement is evaluated: the other one's names may be null.
  trust_policy = var.mode == "irsa" ? jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "ServiceAccountWebIdentity"
      Effect    = "Allow"
      Principal = { Federated = var.oidc_provider_arn }
      Action    = "sts:AssumeRoleWithWebIdentity"
      Condition = {
        StringEquals = {
          "${local.oidc_issuer}:sub" = "system:serviceaccount:${var.namespace}:${var.service_account}"
          "${local.oidc_issuer}:aud" = "sts.amazonaws.com"
        }
      }
    }]
    }) : jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "EksPodIdentity"
      Effect    = "Allow"
      Principal = { Service = "pods.eks.amazonaws.com" }
      Action    = ["sts:AssumeRole", "sts:TagSession"]
    }]
  })
}

resource "aws_iam_role" "agent" {
  name                 = local.role_name
  description          = "tollgate node agents of EKS cluster ${var.cluster_name}: write flow records to S3"
  permissions_boundary = var.permissions_boundary_arn
  assume_role_policy   = local.trust_policy
  tags                 = var.tags
}

resource "aws_iam_role_policy" "agent" {
  name   = "write-flow-records"
  role   = aws_iam_role.agent.id
  policy = var.policy_json
}

resource "aws_eks_addon" "pod_identity_agent" {
  count = var.mode == "pod-identity" && var.manage_pod_identity_agent_addon ? 1 : 0

  cluster_name = var.cluster_name
  addon_name   = "eks-pod-identity-agent"
  tags         = var.tags
}

resource "aws_eks_pod_identity_association" "agent" {
  count = var.mode == "pod-identity" ? 1 : 0

  cluster_name    = var.cluster_name
  namespace       = var.namespace
  service_account = var.service_account
  role_arn        = aws_iam_role.agent.arn
  tags            = var.tags

  depends_on = [aws_eks_addon.pod_identity_agent]
}
