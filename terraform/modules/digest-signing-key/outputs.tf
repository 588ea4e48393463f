output "key_arn" {
  description = "ARN of the signing key (`tollgate digest verify --kms-key`)."
  value       = aws_kms_key.this.arn
}

output "public_key_pem" {
  description = "The key's public key, PEM (`tollgate digest verify --public-key`): keep a copy where the cluster's operators cannot change it."
  value       = data.aws_kms_public_key.this.public_key_pem
}

output "collector_signing" {
  description = "The collectors' digest.signing setting (collector/src/config.rs SigningConfig::Kms): the key, its region and its public key, so that the agents need only kms:Sign."
  value = {
    key_id         = aws_kms_key.this.arn
    region         = data.aws_region.current.region
    public_key_pem = data.aws_kms_public_key.this.public_key_pem
  }
}
