# The cluster side: the agents (the Helm chart of deploy/, as a DaemonSet) and the VPC CNI with
# its own network-policy enforcement off.
#
# Order: the release is installed first and Terraform waits until every agent is ready (each
# node's endpoints attached and programmed); only then is the add-on's configuration changed.
# On a cluster that enforced with the VPC CNI before, NetworkPolicies are never unenforced in
# between (README.md, "Migrating from the VPC CNI's network policy").
#
# Why the VPC CNI's enforcement is off: its node agent attaches its own TC programs to the same
# host-side veths and enforces the same NetworkPolicies from its PolicyEndpoints. Two enforcers
# on one veth each drop what their own rules deny, so a policy change reaches the pod only when
# both have applied it, and a flow the VPC CNI drops never reaches tollgate's record of it.

locals {
  chart_path = coalesce(var.chart_path, "${path.module}/../../../deploy/helm/tollgate")

  values = {
    image = {
      repository = var.image.repository
      tag        = var.image.tag
    }
    serviceAccount = {
      name    = var.service_account
      roleArn = var.service_account_role_arn
    }
    config = {
      collector = {
        cluster = var.cluster_name
        mode    = var.flow_mode
        sink    = var.collector_sink
      }
      agent = {
        enforcement  = var.enforcement
        node_ingress = var.node_ingress
      }
    }
  }

  # The digests' KMS key, as a values document of its own (docs/digests.md); none: the
  # collectors' embedded default, a local key.
  digest_values = var.digest_signing == null ? [] : [yamlencode({
    config = { collector = { digest = { signing = merge({ kind = "kms" }, var.digest_signing) } } }
  })]

  # The records also as OCSF for Amazon Security Lake (docs/security-lake.md), a values
  # document of its own; none: the flow log only.
  security_lake_values = var.security_lake == null ? [] : [yamlencode({
    config = { collector = { security_lake = var.security_lake } }
  })]

  # What the add-on's aws-node pods run with: the caller's values, with the network-policy agent
  # not enforcing.
  vpc_cni_configuration = merge(jsondecode(var.vpc_cni_configuration_json), {
    enableNetworkPolicy = "false"
  })
}

resource "helm_release" "agent" {
  name      = var.release_name
  namespace = var.namespace
  chart     = local.chart_path
  # The chart's DaemonSet is ready when every node's agent is (readiness: endpoints
  # programmed); a release that does not get there is rolled back.
  wait    = true
  atomic  = true
  timeout = var.helm_timeout_seconds
  values  = concat([yamlencode(local.values)], local.digest_values, local.security_lake_values, var.extra_values)
}

resource "aws_eks_addon" "vpc_cni" {
  count = var.manage_vpc_cni_addon ? 1 : 0

  cluster_name         = var.cluster_name
  addon_name           = "vpc-cni"
  addon_version        = var.vpc_cni_addon_version
  configuration_values = jsonencode(local.vpc_cni_configuration)
  # Taking over a self-managed VPC CNI: its fields become the add-on's. Updating: settings
  # changed on the cluster outside the add-on's configuration stay.
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "PRESERVE"
  tags                        = var.tags

  depends_on = [helm_release.agent]
}
