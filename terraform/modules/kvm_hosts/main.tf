# Bare-metal KVM hosts with thaw installed. Used twice by the root module:
# restore hosts (run_fetch_agent = true: the fetch agent as a systemd unit,
# reading checkpoints, talking QUIC to the block servers) and checkpoint
# hosts (write access through their instance profile, no agent).

variable "name" {
  description = "Name prefix of the hosts and their security group."
  type        = string
}

variable "region" {
  description = "Region (AWS_REGION of thaw on the hosts)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the hosts."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets the hosts are spread over, in order."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids needs at least one subnet."
  }
}

variable "ami_id" {
  description = "AMI of the hosts (Amazon Linux 2023 or similar: AWS CLI, python3, systemd)."
  type        = string
}

variable "instance_type" {
  description = "Instance type with hardware KVM (bare metal)."
  type        = string

  validation {
    condition     = can(regex("\\.metal(-[0-9]+xl)?$", var.instance_type))
    error_message = "instance_type must be a bare-metal type (hardware KVM)."
  }
}

variable "instance_count" {
  description = "Number of hosts."
  type        = number
  default     = 1
}

variable "instance_profile_name" {
  description = "Instance profile of the hosts."
  type        = string
}

variable "root_volume_gib" {
  description = "Root volume size, GiB."
  type        = number
  default     = 50
}

variable "store_url" {
  description = "The thaw store (s3://BUCKET/PREFIX)."
  type        = string
}

variable "thaw_binary_s3_uri" {
  description = "s3://BUCKET/KEY of the thaw binary."
  type        = string
}

variable "thaw_binary_sha256" {
  description = "SHA-256 of the thaw binary."
  type        = string
}

variable "run_fetch_agent" {
  description = "Run thaw agent as a systemd unit (restore hosts)."
  type        = bool
  default     = false
}

variable "block_servers_dns" {
  description = "NAME:PORT whose addresses are the block servers (thaw agent --block-servers-dns, re-resolved every 2 s)."
  type        = string
  default     = ""
}

variable "block_server_sg_id" {
  description = "Security group of the block servers (QUIC egress goes only there)."
  type        = string
  default     = ""
}

variable "quic_port" {
  description = "UDP port of the block servers."
  type        = number
  default     = 4433
}

variable "agent_tls_secret_arn" {
  description = "Secret with ca.pem, client.pem, client.key for the agent."
  type        = string
  default     = ""
}

variable "agent_cache_size" {
  description = "thaw agent --cache-size."
  type        = string
  default     = "1GiB"
}

variable "agent_metrics_port" {
  description = "thaw agent --metrics 127.0.0.1:PORT."
  type        = number
  default     = 9464
}

resource "aws_security_group" "hosts" {
  name_prefix = "${var.name}-"
  description = "thaw ${var.name} hosts: no inbound; HTTPS out, QUIC to block servers"
  vpc_id      = var.vpc_id

  lifecycle {
    create_before_destroy = true

    precondition {
      condition     = !var.run_fetch_agent || (var.block_servers_dns != "" && var.block_server_sg_id != "" && var.agent_tls_secret_arn != "")
      error_message = "run_fetch_agent needs block_servers_dns, block_server_sg_id and agent_tls_secret_arn."
    }
  }
}

resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.hosts.id
  description       = "HTTPS to S3, Secrets Manager, SSM and the package mirrors"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "quic" {
  count = var.run_fetch_agent ? 1 : 0

  security_group_id            = aws_security_group.hosts.id
  description                  = "QUIC (UDP) to the block servers"
  ip_protocol                  = "udp"
  from_port                    = var.quic_port
  to_port                      = var.quic_port
  referenced_security_group_id = var.block_server_sg_id
}

resource "aws_instance" "host" {
  count = var.instance_count

  ami                         = var.ami_id
  instance_type               = var.instance_type
  subnet_id                   = var.subnet_ids[count.index % length(var.subnet_ids)]
  vpc_security_group_ids      = [aws_security_group.hosts.id]
  iam_instance_profile        = var.instance_profile_name
  associate_public_ip_address = false
  ebs_optimized               = true
  monitoring                  = true

  user_data = templatefile("${path.module}/user_data.sh.tftpl", {
    region               = var.region
    store_url            = var.store_url
    thaw_binary_s3_uri   = var.thaw_binary_s3_uri
    thaw_binary_sha256   = var.thaw_binary_sha256
    run_fetch_agent      = var.run_fetch_agent
    block_server_flags   = "--block-servers-dns ${var.block_servers_dns}"
    agent_tls_secret_arn = var.agent_tls_secret_arn
    agent_cache_size     = var.agent_cache_size
    agent_metrics_port   = var.agent_metrics_port
  })

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_size           = var.root_volume_gib
    volume_type           = "gp3"
    encrypted             = true
    delete_on_termination = true
  }

  tags = {
    Name = "${var.name}-${count.index}"
  }

  # A host runs VMs: a new AMI release or binary must not replace it behind
  # the operator's back. Roll out with terraform apply -replace=ADDRESS.
  lifecycle {
    ignore_changes = [ami, user_data]
  }
}

output "security_group_id" {
  description = "Security group of the hosts (the block servers admit it)."
  value       = aws_security_group.hosts.id
}

output "instance_ids" {
  description = "Instance ids of the hosts."
  value       = aws_instance.host[*].id
}

output "private_ips" {
  description = "Private IPs of the hosts."
  value       = aws_instance.host[*].private_ip
}
