variable "region" {
  description = "AWS region of the whole deployment (bucket, block servers, hosts)."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as us-east-1."
  }
}

variable "name" {
  description = "Name prefix of every resource (and of the bucket, which gets a random suffix)."
  type        = string
  default     = "thaw"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,19}$", var.name))
    error_message = "name must be 2-20 characters: lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "VPC the block servers and hosts run in. Its subnets need a route to S3 and Secrets Manager (NAT gateway or VPC endpoints)."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123456789abcdef0."
  }
}

variable "block_server_subnet_ids" {
  description = "Private subnets (ideally one per availability zone) for the internal Network Load Balancer and the block-server auto-scaling group."
  type        = list(string)

  validation {
    condition     = length(var.block_server_subnet_ids) > 0 && alltrue([for s in var.block_server_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "block_server_subnet_ids needs at least one subnet id like subnet-0123456789abcdef0."
  }
}

variable "host_subnet_ids" {
  description = "Private subnets for restore and checkpoint hosts; hosts are spread over them in order."
  type        = list(string)

  validation {
    condition     = length(var.host_subnet_ids) > 0 && alltrue([for s in var.host_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "host_subnet_ids needs at least one subnet id like subnet-0123456789abcdef0."
  }
}

variable "checkpoint_prefix" {
  description = "Key prefix inside the bucket under which thaw stores checkpoints (the PREFIX of s3://BUCKET/PREFIX). Roles are scoped to it."
  type        = string
  default     = "fleet"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$", var.checkpoint_prefix))
    error_message = "checkpoint_prefix must be non-empty path segments of letters, digits, '.', '_' or '-', separated by '/', without leading or trailing '/'."
  }
}

variable "thaw_binary_s3_uri" {
  description = "s3://BUCKET/KEY of the x86_64 Linux thaw binary (cargo build --release -p integration: target/release/thaw). Instances download it at boot with their role; it needs glibc <= 2.34 (Amazon Linux 2023)."
  type        = string

  validation {
    condition     = can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+[^/]$", var.thaw_binary_s3_uri))
    error_message = "thaw_binary_s3_uri must be s3://BUCKET/KEY naming one object."
  }
}

variable "thaw_binary_sha256" {
  description = "SHA-256 (hex) of the thaw binary; instances refuse to start a binary that does not match (sha256sum target/release/thaw)."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.thaw_binary_sha256))
    error_message = "thaw_binary_sha256 must be 64 lower-case hex digits."
  }
}

variable "ami_id" {
  description = "AMI for every instance. Empty: the latest Amazon Linux 2023 x86_64 (has the AWS CLI and python3 the boot scripts use)."
  type        = string
  default     = ""

  validation {
    condition     = var.ami_id == "" || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must be empty or look like ami-0123456789abcdef0."
  }
}

variable "operator_principal_arns" {
  description = "IAM users or roles allowed to assume the operator role, the only principal that may delete checkpoint objects."
  type        = list(string)

  validation {
    condition     = length(var.operator_principal_arns) > 0 && alltrue([for a in var.operator_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(root|user/.+|role/.+)$", a))])
    error_message = "operator_principal_arns needs at least one IAM ARN (arn:aws:iam::123456789012:user/NAME, role/NAME or root)."
  }
}

variable "operator_require_mfa" {
  description = "Whether assuming the operator role requires MFA."
  type        = bool
  default     = true
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which overwritten or deleted checkpoint object versions are removed for good."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && var.noncurrent_version_expiration_days <= 3650 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days must be a whole number from 1 to 3650."
  }
}

variable "checkpoint_expiration_days" {
  description = "Days after which current checkpoint objects expire (0: never). Checkpoints written against a parent reuse the parent's segments, so only set this if no checkpoint chain outlives it."
  type        = number
  default     = 0

  validation {
    condition     = var.checkpoint_expiration_days >= 0 && var.checkpoint_expiration_days <= 3650 && floor(var.checkpoint_expiration_days) == var.checkpoint_expiration_days
    error_message = "checkpoint_expiration_days must be a whole number from 0 (off) to 3650."
  }
}

variable "quic_port" {
  description = "UDP port of the block servers' QUIC listener (thaw block-server --listen) and of the load balancer."
  type        = number
  default     = 4433

  validation {
    condition     = var.quic_port >= 1024 && var.quic_port <= 65535
    error_message = "quic_port must be from 1024 to 65535."
  }
}

variable "block_server_metrics_port" {
  description = "Port of each block server's Prometheus endpoint (thaw block-server --metrics 127.0.0.1:PORT, local to the instance)."
  type        = number
  default     = 9465

  validation {
    condition     = var.block_server_metrics_port >= 1024 && var.block_server_metrics_port <= 65535
    error_message = "block_server_metrics_port must be from 1024 to 65535."
  }
}

variable "block_server_instance_type" {
  description = "Instance type of block servers (x86_64: the thaw binary is built for it). Network bandwidth matters most."
  type        = string
  default     = "c6in.xlarge"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9-]+$", var.block_server_instance_type)) && !can(regex("^[a-z]+[0-9]+[a-z]*g[a-z]*\\.", var.block_server_instance_type))
    error_message = "block_server_instance_type must be an x86_64 instance type such as c6in.xlarge (not Graviton)."
  }
}

variable "block_server_cache_size" {
  description = "Memory cache of each block server (thaw block-server --cache-size); leave room for the OS on the instance type."
  type        = string
  default     = "4GiB"

  validation {
    condition     = can(regex("^[0-9]+(KiB|MiB|GiB)$", var.block_server_cache_size))
    error_message = "block_server_cache_size must be a size like 512MiB or 4GiB."
  }
}

variable "block_server_count" {
  description = "Number of block servers. Agents shard blocks over them (each block's home by rendezvous hashing) and find them through one DNS name, so changing the count moves only the blocks of the servers added or removed."
  type        = number
  default     = 3

  validation {
    condition     = var.block_server_count >= 1 && var.block_server_count <= 100 && floor(var.block_server_count) == var.block_server_count
    error_message = "block_server_count must be a whole number from 1 to 100."
  }
}

variable "restore_host_instance_type" {
  description = "Instance type of restore hosts: bare metal, so /dev/kvm is hardware KVM (x86_64 only)."
  type        = string
  default     = "c5.metal"

  validation {
    condition     = can(regex("^[a-z][0-9][a-z0-9-]*\\.metal(-[0-9]+xl)?$", var.restore_host_instance_type)) && !can(regex("^[a-z]+[0-9]+[a-z]*g[a-z]*\\.", var.restore_host_instance_type))
    error_message = "restore_host_instance_type must be an x86_64 bare-metal type such as c5.metal, m5.metal or m7i.metal-24xl."
  }
}

variable "restore_host_count" {
  description = "Number of restore hosts (each runs the fetch agent as a systemd unit)."
  type        = number
  default     = 1

  validation {
    condition     = var.restore_host_count >= 0 && var.restore_host_count <= 50 && floor(var.restore_host_count) == var.restore_host_count
    error_message = "restore_host_count must be a whole number from 0 to 50."
  }
}

variable "agent_cache_size" {
  description = "Host cache of decoded blocks shared by all restores on a restore host (thaw agent --cache-size)."
  type        = string
  default     = "16GiB"

  validation {
    condition     = can(regex("^[0-9]+(KiB|MiB|GiB)$", var.agent_cache_size))
    error_message = "agent_cache_size must be a size like 1GiB or 16GiB."
  }
}

variable "agent_metrics_port" {
  description = "Port of the fetch agent's Prometheus endpoint (thaw agent --metrics 127.0.0.1:PORT, local to the host)."
  type        = number
  default     = 9464

  validation {
    condition     = var.agent_metrics_port >= 1024 && var.agent_metrics_port <= 65535
    error_message = "agent_metrics_port must be from 1024 to 65535."
  }
}

variable "checkpoint_host_instance_type" {
  description = "Instance type of checkpoint hosts: bare metal, so /dev/kvm is hardware KVM (x86_64 only)."
  type        = string
  default     = "m5.metal"

  validation {
    condition     = can(regex("^[a-z][0-9][a-z0-9-]*\\.metal(-[0-9]+xl)?$", var.checkpoint_host_instance_type)) && !can(regex("^[a-z]+[0-9]+[a-z]*g[a-z]*\\.", var.checkpoint_host_instance_type))
    error_message = "checkpoint_host_instance_type must be an x86_64 bare-metal type such as m5.metal or c5.metal."
  }
}

variable "checkpoint_host_count" {
  description = "Number of checkpoint hosts to create here (0: run checkpoints elsewhere with the checkpoint-host instance profile)."
  type        = number
  default     = 0

  validation {
    condition     = var.checkpoint_host_count >= 0 && var.checkpoint_host_count <= 50 && floor(var.checkpoint_host_count) == var.checkpoint_host_count
    error_message = "checkpoint_host_count must be a whole number from 0 to 50."
  }
}

variable "host_root_volume_gib" {
  description = "Root EBS volume size of restore and checkpoint hosts, GiB."
  type        = number
  default     = 50

  validation {
    condition     = var.host_root_volume_gib >= 8 && var.host_root_volume_gib <= 16384
    error_message = "host_root_volume_gib must be from 8 to 16384."
  }
}

variable "pki_validity_hours" {
  description = "Validity of the generated CA and the block-server and agent certificates, hours. Re-apply before expiry to renew (hosts fetch the new material when their units restart)."
  type        = number
  default     = 8760

  validation {
    condition     = var.pki_validity_hours >= 24 && var.pki_validity_hours <= 87600
    error_message = "pki_validity_hours must be from 24 (one day) to 87600 (ten years)."
  }
}

variable "enable_ssm_session_manager" {
  description = "Attach AmazonSSMManagedInstanceCore to host and block-server roles, so operators get a shell through Session Manager (no SSH port is opened)."
  type        = bool
  default     = true
}
