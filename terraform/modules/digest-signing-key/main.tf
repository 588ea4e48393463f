# The key that signs the node collectors' digests (docs/digests.md): an AWS KMS asymmetric key,
# ECC_NIST_P256 for SIGN_VERIFY, whose private half never leaves KMS.
#
# Who may do what, all in the key policy (no IAM policy can add to it, since the policy does
# not delegate the key's use to the account):
# - the agents' role: kms:Sign, and only ECDSA_SHA_256 over a RAW message (the collector
#   signs the 32-byte SHA-256 of each digest's body) — not GetPublicKey, not Verify, nothing
#   else. The collectors get the public key from their settings (collector_signing below);
# - verifier_arns (auditors, the incident role): kms:GetPublicKey, kms:Verify, kms:DescribeKey;
# - the account: the key's administration (describe, tag, policy, schedule deletion…), which
#   KMS requires of every key policy so that the key cannot be locked out, and reading the
#   public key (Terraform's aws_kms_public_key does) — no signature, no verification.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

locals {
  account_root = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"

  # Administration and the public key: no kms:Sign, no kms:Verify, no kms:*.
  administration = [
    "kms:CancelKeyDeletion",
    "kms:CreateAlias",
    "kms:DeleteAlias",
    "kms:DescribeKey",
    "kms:DisableKey",
    "kms:EnableKey",
    "kms:GetKeyPolicy",
    "kms:GetPublicKey",
    "kms:ListAliases",
    "kms:ListResourceTags",
    "kms:PutKeyPolicy",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateAlias",
    "kms:UpdateKeyDescription",
  ]

  account_statement = {
    Sid       = "AccountAdministersOnly"
    Effect    = "Allow"
    Principal = { AWS = local.account_root }
    Action    = local.administration
    Resource  = "*"
  }

  agents_statement = {
    Sid       = "AgentsSignDigestsOnly"
    Effect    = "Allow"
    Principal = { AWS = var.signer_role_arn }
    Action    = ["kms:Sign"]
    Resource  = "*"
    Condition = {
      StringEquals = {
        "kms:SigningAlgorithm" = "ECDSA_SHA_256"
        "kms:MessageType"      = "RAW"
      }
    }
  }

  verifiers_statement = {
    Sid       = "VerifiersReadThePublicKey"
    Effect    = "Allow"
    Principal = { AWS = var.verifier_arns }
    Action    = ["kms:DescribeKey", "kms:GetPublicKey", "kms:Verify"]
    Resource  = "*"
  }

  statements = concat(
    [local.account_statement, local.agents_statement],
    length(var.verifier_arns) == 0 ? [] : [local.verifiers_statement],
  )
}

resource "aws_kms_key" "this" {
  #checkov:skip=CKV_AWS_7:KMS rotates only symmetric keys; an asymmetric signing key cannot be rotated in place (a new key and a new chain, which the digests record).
  description              = "tollgate digest signing key of ${var.name}"
  key_usage                = "SIGN_VERIFY"
  customer_master_key_spec = "ECC_NIST_P256"
  deletion_window_in_days  = var.deletion_window_days
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = local.statements
  })
  tags = var.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/tollgate-digests-${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

data "aws_kms_public_key" "this" {
  key_id = aws_kms_key.this.arn
}
