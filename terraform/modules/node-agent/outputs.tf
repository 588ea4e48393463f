output "release" {
  description = "Namespace and name of the Helm release, as namespace/name."
  value       = "${helm_release.agent.namespace}/${helm_release.agent.name}"
}

output "vpc_cni_configuration" {
  description = "The vpc-cni add-on's configuration values (JSON) with the network-policy agent not enforcing: what the add-on gets here, or what to give it where it is managed elsewhere."
  value       = jsonencode(local.vpc_cni_configuration)
}
