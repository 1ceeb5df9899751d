# QUIC block servers: `server_count` instances of `thaw block-server`, each
# addressed directly (agents shard blocks over them by rendezvous hashing, so
# a load balancer spreading connections would defeat the sharding). A private
# Route 53 zone names them all with one multi-value A record, which agents
# re-resolve (thaw agent --block-servers-dns NAME:PORT): changing the count
# moves only the blocks of the servers added or removed. The instances admit
# QUIC only from the restore hosts' security group.

variable "name" {
  description = "Name prefix of every resource here."
  type        = string
}

variable "region" {
  description = "Region (AWS_REGION of the block-server process)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the instances and of the private DNS zone."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets of the instances, used in turn."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids needs at least one subnet."
  }
}

variable "ami_id" {
  description = "AMI of the block servers (Amazon Linux 2023 or similar: AWS CLI, python3, systemd)."
  type        = string
}

variable "instance_type" {
  description = "Instance type of the block servers."
  type        = string
}

variable "instance_profile_name" {
  description = "Instance profile with read access to the checkpoints and the server TLS secret."
  type        = string
}

variable "server_count" {
  description = "Number of block servers (each a shard home for about 1/count of the blocks)."
  type        = number
  default     = 3

  validation {
    condition     = var.server_count >= 1 && var.server_count <= 100 && floor(var.server_count) == var.server_count
    error_message = "server_count must be a whole number from 1 to 100."
  }
}

variable "quic_port" {
  description = "UDP port of QUIC on the instances."
  type        = number
  default     = 4433

  validation {
    condition     = var.quic_port >= 1 && var.quic_port <= 65535
    error_message = "quic_port must be a port number."
  }
}

variable "metrics_port" {
  description = "Port of each block server's Prometheus endpoint (thaw block-server --metrics 127.0.0.1:PORT, local to the instance)."
  type        = number
  default     = 9465

  validation {
    condition     = var.metrics_port >= 1 && var.metrics_port <= 65535
    error_message = "metrics_port must be a port number."
  }
}

variable "dns_zone_name" {
  description = "Private Route 53 zone created for the block servers' name (attached to the VPC)."
  type        = string
  default     = "thaw.internal"
}

variable "client_security_group_ids" {
  description = "Security groups whose members (the restore hosts) may reach the QUIC port."
  type        = list(string)
}

variable "store_url" {
  description = "thaw block-server --store (s3://BUCKET/PREFIX)."
  type        = string
}

variable "cache_size" {
  description = "thaw block-server --cache-size."
  type        = string
  default     = "1GiB"
}

variable "tls_secret_arn" {
  description = "Secret with ca.pem, server.pem, server.key."
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

variable "root_volume_gib" {
  description = "Root volume size, GiB."
  type        = number
  default     = 20
}

resource "aws_security_group" "servers" {
  name_prefix = "${var.name}-blocks-"
  description = "thaw block servers: QUIC from restore hosts only"
  vpc_id      = var.vpc_id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "servers_quic" {
  for_each = toset(var.client_security_group_ids)

  security_group_id            = aws_security_group.servers.id
  description                  = "QUIC (UDP) from restore hosts"
  ip_protocol                  = "udp"
  from_port                    = var.quic_port
  to_port                      = var.quic_port
  referenced_security_group_id = each.value
}

resource "aws_vpc_security_group_egress_rule" "servers_https" {
  security_group_id = aws_security_group.servers.id
  description       = "HTTPS to S3, Secrets Manager, SSM and the package mirrors"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

# Fixed instances rather than an auto-scaling group: each is a shard home
# whose address agents must know. Replacing one (terraform apply -replace)
# moves only its shards; its address leaves the DNS record with it.
resource "aws_instance" "blocks" {
  count = var.server_count

  ami                         = var.ami_id
  instance_type               = var.instance_type
  subnet_id                   = var.subnet_ids[count.index % length(var.subnet_ids)]
  vpc_security_group_ids      = [aws_security_group.servers.id]
  iam_instance_profile        = var.instance_profile_name
  associate_public_ip_address = false
  ebs_optimized               = true
  monitoring                  = true

  user_data = templatefile("${path.module}/user_data.sh.tftpl", {
    region             = var.region
    store_url          = var.store_url
    quic_port          = var.quic_port
    metrics_port       = var.metrics_port
    cache_size         = var.cache_size
    tls_secret_arn     = var.tls_secret_arn
    thaw_binary_s3_uri = var.thaw_binary_s3_uri
    thaw_binary_sha256 = var.thaw_binary_sha256
  })
  # A new binary or setting takes a new instance (one at a time: see README).
  user_data_replace_on_change = false

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
    Name = "${var.name}-block-server-${count.index}"
  }

  lifecycle {
    ignore_changes = [ami, user_data]
  }
}

resource "aws_route53_zone" "blocks" {
  #checkov:skip=CKV2_AWS_38:A private zone attached to one VPC: DNSSEC signing applies to public zones.
  #checkov:skip=CKV2_AWS_39:Query logging of a private zone holding one record of the servers' own addresses adds nothing worth its cost.
  name    = var.dns_zone_name
  comment = "thaw ${var.name}: the block servers' name"

  vpc {
    vpc_id = var.vpc_id
  }
}

# One name, every server's address: agents resolve it (and re-resolve it
# every few seconds) to the list they shard over. The certificate names it.
resource "aws_route53_record" "blocks" {
  zone_id = aws_route53_zone.blocks.zone_id
  name    = "${var.name}-block-servers.${var.dns_zone_name}"
  type    = "A"
  ttl     = 30
  records = aws_instance.blocks[*].private_ip
}

output "dns_name" {
  description = "The name resolving to every block server (the TLS server name agents check)."
  value       = aws_route53_record.blocks.fqdn
}

output "dns_endpoint" {
  description = "NAME:PORT for thaw agent --block-servers-dns."
  value       = "${aws_route53_record.blocks.fqdn}:${var.quic_port}"
}

output "addresses" {
  description = "IP:PORT of each block server (the lines of a --block-servers-file)."
  value       = [for ip in aws_instance.blocks[*].private_ip : "${ip}:${var.quic_port}"]
}

output "server_security_group_id" {
  description = "Security group of the block-server instances (clients send QUIC to it)."
  value       = aws_security_group.servers.id
}

output "instance_ids" {
  description = "Instance ids of the block servers."
  value       = aws_instance.blocks[*].id
}
