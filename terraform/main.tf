# thaw on AWS: a checkpoint bucket, IAM roles, the mutual-TLS material in
# Secrets Manager, QUIC block servers named by one private DNS record (agents
# shard blocks over them), and bare-metal restore (and optionally checkpoint) hosts running
# the fetch agent. See README.md.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_ssm_parameter" "al2023" {
  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

locals {
  ami_id = var.ami_id != "" ? var.ami_id : nonsensitive(data.aws_ssm_parameter.al2023.value)

  # The store every process opens: thaw vm checkpoint/restore --store,
  # thaw agent --store, thaw block-server --store.
  store_url = "s3://${module.checkpoint_bucket.bucket_name}/${var.checkpoint_prefix}"

  # s3://BUCKET/KEY of the binary -> [BUCKET, KEY], for the roles' read grant.
  binary_location   = regex("^s3://([^/]+)/(.+)$", var.thaw_binary_s3_uri)
  binary_object_arn = "arn:${data.aws_partition.current.partition}:s3:::${local.binary_location[0]}/${local.binary_location[1]}"
}

module "checkpoint_bucket" {
  source = "./modules/checkpoint_bucket"

  name                               = var.name
  account_id                         = data.aws_caller_identity.current.account_id
  partition                          = data.aws_partition.current.partition
  operator_role_arn                  = module.iam.operator_role_arn
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
  checkpoint_prefix                  = var.checkpoint_prefix
  checkpoint_expiration_days         = var.checkpoint_expiration_days
}

module "pki" {
  source = "./modules/pki"

  name                   = var.name
  account_id             = data.aws_caller_identity.current.account_id
  partition              = data.aws_partition.current.partition
  block_server_dns_names = [module.block_servers.dns_name]
  validity_hours         = var.pki_validity_hours
}

module "iam" {
  source = "./modules/iam"

  name                       = var.name
  partition                  = data.aws_partition.current.partition
  region                     = var.region
  bucket_arn                 = module.checkpoint_bucket.bucket_arn
  bucket_kms_key_arn         = module.checkpoint_bucket.kms_key_arn
  checkpoint_prefix          = var.checkpoint_prefix
  binary_object_arn          = local.binary_object_arn
  block_server_secret_arn    = module.pki.block_server_secret_arn
  agent_secret_arn           = module.pki.agent_secret_arn
  pki_kms_key_arn            = module.pki.kms_key_arn
  operator_principal_arns    = var.operator_principal_arns
  operator_require_mfa       = var.operator_require_mfa
  enable_ssm_session_manager = var.enable_ssm_session_manager
}

module "block_servers" {
  source = "./modules/block_servers"

  name                      = var.name
  region                    = var.region
  vpc_id                    = var.vpc_id
  subnet_ids                = var.block_server_subnet_ids
  ami_id                    = local.ami_id
  instance_type             = var.block_server_instance_type
  instance_profile_name     = module.iam.block_server_instance_profile_name
  server_count              = var.block_server_count
  quic_port                 = var.quic_port
  metrics_port              = var.block_server_metrics_port
  client_security_group_ids = [module.restore_hosts.security_group_id]
  store_url                 = local.store_url
  cache_size                = var.block_server_cache_size
  tls_secret_arn            = module.pki.block_server_secret_arn
  thaw_binary_s3_uri        = var.thaw_binary_s3_uri
  thaw_binary_sha256        = var.thaw_binary_sha256
}

module "restore_hosts" {
  source = "./modules/kvm_hosts"

  name                  = "${var.name}-restore"
  region                = var.region
  vpc_id                = var.vpc_id
  subnet_ids            = var.host_subnet_ids
  ami_id                = local.ami_id
  instance_type         = var.restore_host_instance_type
  instance_count        = var.restore_host_count
  instance_profile_name = module.iam.restore_host_instance_profile_name
  root_volume_gib       = var.host_root_volume_gib
  store_url             = local.store_url
  thaw_binary_s3_uri    = var.thaw_binary_s3_uri
  thaw_binary_sha256    = var.thaw_binary_sha256
  run_fetch_agent       = true
  block_servers_dns     = module.block_servers.dns_endpoint
  block_server_sg_id    = module.block_servers.server_security_group_id
  quic_port             = var.quic_port
  agent_tls_secret_arn  = module.pki.agent_secret_arn
  agent_cache_size      = var.agent_cache_size
  agent_metrics_port    = var.agent_metrics_port
}

module "checkpoint_hosts" {
  source = "./modules/kvm_hosts"

  name                  = "${var.name}-checkpoint"
  region                = var.region
  vpc_id                = var.vpc_id
  subnet_ids            = var.host_subnet_ids
  ami_id                = local.ami_id
  instance_type         = var.checkpoint_host_instance_type
  instance_count        = var.checkpoint_host_count
  instance_profile_name = module.iam.checkpoint_host_instance_profile_name
  root_volume_gib       = var.host_root_volume_gib
  store_url             = local.store_url
  thaw_binary_s3_uri    = var.thaw_binary_s3_uri
  thaw_binary_sha256    = var.thaw_binary_sha256
  run_fetch_agent       = false
}
