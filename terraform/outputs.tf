output "bucket_name" {
  description = "The checkpoint bucket."
  value       = module.checkpoint_bucket.bucket_name
}

output "store_url" {
  description = "The --store of every thaw command in this deployment (s3://BUCKET/PREFIX)."
  value       = local.store_url
}

output "bucket_kms_key_arn" {
  description = "KMS key encrypting checkpoint objects at rest."
  value       = module.checkpoint_bucket.kms_key_arn
}

output "block_servers_dns" {
  description = "NAME:PORT resolving to every block server (thaw agent --block-servers-dns)."
  value       = module.block_servers.dns_endpoint
}

output "block_server_addresses" {
  description = "IP:PORT of each block server: the lines of a --block-servers-file for agents outside this deployment's DNS."
  value       = module.block_servers.addresses
}

output "block_server_instance_ids" {
  description = "Block-server instances."
  value       = module.block_servers.instance_ids
}

output "restore_host_instance_ids" {
  description = "Restore hosts (connect with: aws ssm start-session --target ID)."
  value       = module.restore_hosts.instance_ids
}

output "restore_host_private_ips" {
  description = "Private IPs of the restore hosts."
  value       = module.restore_hosts.private_ips
}

output "checkpoint_host_instance_ids" {
  description = "Checkpoint hosts created here (empty when checkpoint_host_count is 0)."
  value       = module.checkpoint_hosts.instance_ids
}

output "checkpoint_host_instance_profile" {
  description = "Instance profile that lets any instance write checkpoints (thaw vm checkpoint --store STORE_URL)."
  value       = module.iam.checkpoint_host_instance_profile_name
}

output "operator_role_arn" {
  description = "The only role that may delete checkpoint objects."
  value       = module.iam.operator_role_arn
}

output "tls_secret_arns" {
  description = "Secrets Manager secrets holding the mutual-TLS material (block server: ca/server; agent: ca/client)."
  value = {
    block_server = module.pki.block_server_secret_arn
    agent        = module.pki.agent_secret_arn
  }
}
