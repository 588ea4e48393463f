output "role_arn" {
  description = "ARN of the agents' IAM role."
  value       = aws_iam_role.agent.arn
}

output "role_name" {
  description = "Name of the agents' IAM role."
  value       = aws_iam_role.agent.name
}

output "service_account_role_arn" {
  description = "The role ARN the ServiceAccount must carry (the chart's serviceAccount.roleArn): the role's ARN with irsa, empty with pod-identity (the association binds it)."
  value       = var.mode == "irsa" ? aws_iam_role.agent.arn : ""
}
