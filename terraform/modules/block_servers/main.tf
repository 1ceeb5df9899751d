# QUIC block servers: an auto-scaling group of `thaw block-server` instances
# behind an internal Network Load Balancer with a UDP listener. The load
# balancer's security group admits only the restore hosts' security group;
# the instances admit only the load balancer's security group (UDP target
# groups always preserve the client IP, so the instances check the source
# through the load balancer's group).

variable "name" {
  description = "Name prefix of every resource here."
  type        = string
}

variable "region" {
  description = "Region (AWS_REGION of the block-server process)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the load balancer and the instances."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets of the load balancer and the auto-scaling group."
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

variable "min_size" {
  description = "Minimum number of block servers."
  type        = number
  default     = 2
}

variable "max_size" {
  description = "Maximum number of block servers."
  type        = number
  default     = 4
}

variable "quic_port" {
  description = "UDP port of QUIC on the load balancer and the instances."
  type        = number
  default     = 4433

  validation {
    condition     = var.quic_port >= 1 && var.quic_port <= 65535
    error_message = "quic_port must be a port number."
  }
}

variable "health_check_port" {
  description = "TCP port the health-check socket unit listens on while the block server runs."
  type        = number
  default     = 4434

  validation {
    condition     = var.health_check_port >= 1 && var.health_check_port <= 65535
    error_message = "health_check_port must be a port number."
  }
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

resource "aws_security_group" "nlb" {
  name_prefix = "${var.name}-blocks-nlb-"
  description = "thaw block-server load balancer: QUIC from restore hosts only"
  vpc_id      = var.vpc_id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "nlb_quic" {
  for_each = toset(var.client_security_group_ids)

  security_group_id            = aws_security_group.nlb.id
  description                  = "QUIC (UDP) from restore hosts"
  ip_protocol                  = "udp"
  from_port                    = var.quic_port
  to_port                      = var.quic_port
  referenced_security_group_id = each.value
}

resource "aws_vpc_security_group_egress_rule" "nlb_to_servers_quic" {
  security_group_id            = aws_security_group.nlb.id
  description                  = "QUIC (UDP) to block servers"
  ip_protocol                  = "udp"
  from_port                    = var.quic_port
  to_port                      = var.quic_port
  referenced_security_group_id = aws_security_group.servers.id
}

resource "aws_vpc_security_group_egress_rule" "nlb_to_servers_health" {
  security_group_id            = aws_security_group.nlb.id
  description                  = "TCP health checks to block servers"
  ip_protocol                  = "tcp"
  from_port                    = var.health_check_port
  to_port                      = var.health_check_port
  referenced_security_group_id = aws_security_group.servers.id
}

resource "aws_security_group" "servers" {
  name_prefix = "${var.name}-blocks-"
  description = "thaw block servers: QUIC and health checks from the load balancer only"
  vpc_id      = var.vpc_id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "servers_quic" {
  security_group_id            = aws_security_group.servers.id
  description                  = "QUIC (UDP) through the load balancer"
  ip_protocol                  = "udp"
  from_port                    = var.quic_port
  to_port                      = var.quic_port
  referenced_security_group_id = aws_security_group.nlb.id
}

resource "aws_vpc_security_group_ingress_rule" "servers_health" {
  security_group_id            = aws_security_group.servers.id
  description                  = "TCP health checks from the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = var.health_check_port
  to_port                      = var.health_check_port
  referenced_security_group_id = aws_security_group.nlb.id
}

resource "aws_vpc_security_group_egress_rule" "servers_https" {
  security_group_id = aws_security_group.servers.id
  description       = "HTTPS to S3, Secrets Manager, SSM and the package mirrors"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_lb" "blocks" {
  #checkov:skip=CKV_AWS_91:Network Load Balancers write access logs only for TLS listeners; this one has a UDP listener (QUIC carries its own TLS 1.3 end to end).
  #checkov:skip=CKV_AWS_150:The load balancer holds no state (checkpoints live in S3) and terraform recreates it; deletion protection would only block teardown.
  name_prefix                      = substr(replace(var.name, "-", ""), 0, 6)
  internal                         = true
  load_balancer_type               = "network"
  subnets                          = var.subnet_ids
  security_groups                  = [aws_security_group.nlb.id]
  enable_cross_zone_load_balancing = true
}

resource "aws_lb_target_group" "quic" {
  name_prefix          = substr(replace(var.name, "-", ""), 0, 6)
  port                 = var.quic_port
  protocol             = "UDP"
  target_type          = "instance"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  # UDP target groups need a TCP/HTTP health check; the socket unit on the
  # instances accepts on this port exactly while thaw-block-server runs.
  health_check {
    protocol            = "TCP"
    port                = tostring(var.health_check_port)
    interval            = 10
    healthy_threshold   = 3
    unhealthy_threshold = 3
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_lb_listener" "quic" {
  load_balancer_arn = aws_lb.blocks.arn
  port              = var.quic_port
  protocol          = "UDP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.quic.arn
  }
}

resource "aws_launch_template" "blocks" {
  name_prefix            = "${var.name}-blocks-"
  image_id               = var.ami_id
  instance_type          = var.instance_type
  ebs_optimized          = true
  vpc_security_group_ids = [aws_security_group.servers.id]
  update_default_version = true

  user_data = base64encode(templatefile("${path.module}/user_data.sh.tftpl", {
    region             = var.region
    store_url          = var.store_url
    quic_port          = var.quic_port
    health_check_port  = var.health_check_port
    cache_size         = var.cache_size
    tls_secret_arn     = var.tls_secret_arn
    thaw_binary_s3_uri = var.thaw_binary_s3_uri
    thaw_binary_sha256 = var.thaw_binary_sha256
  }))

  iam_instance_profile {
    name = var.instance_profile_name
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = var.root_volume_gib
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = { Name = "${var.name}-block-server" }
  }

  tag_specifications {
    resource_type = "volume"
    tags          = { Name = "${var.name}-block-server" }
  }
}

resource "aws_autoscaling_group" "blocks" {
  name_prefix               = "${var.name}-blocks-"
  min_size                  = var.min_size
  max_size                  = var.max_size
  desired_capacity          = var.min_size
  vpc_zone_identifier       = var.subnet_ids
  target_group_arns         = [aws_lb_target_group.quic.arn]
  health_check_type         = "ELB"
  health_check_grace_period = 180

  launch_template {
    id      = aws_launch_template.blocks.id
    version = aws_launch_template.blocks.latest_version
  }

  instance_refresh {
    strategy = "Rolling"

    preferences {
      min_healthy_percentage = 50
    }
  }

  tag {
    key                 = "Name"
    value               = "${var.name}-block-server"
    propagate_at_launch = true
  }

  lifecycle {
    precondition {
      condition     = var.min_size <= var.max_size
      error_message = "block server min_size must not exceed max_size."
    }
    ignore_changes = [desired_capacity]
  }
}

# Scale on network traffic: a block server is bound by its NIC.
resource "aws_autoscaling_policy" "network_out" {
  name                   = "${var.name}-blocks-network-out"
  autoscaling_group_name = aws_autoscaling_group.blocks.name
  policy_type            = "TargetTrackingScaling"

  target_tracking_configuration {
    predefined_metric_specification {
      predefined_metric_type = "ASGAverageNetworkOut"
    }
    # Bytes per minute per instance (~1 Gbit/s on average).
    target_value = 7500000000
  }
}

output "nlb_dns_name" {
  description = "DNS name of the internal load balancer (the TLS server name agents check)."
  value       = aws_lb.blocks.dns_name
}

output "endpoint" {
  description = "HOST:PORT for thaw agent --block-server."
  value       = "${aws_lb.blocks.dns_name}:${var.quic_port}"
}

output "nlb_security_group_id" {
  description = "Security group of the load balancer (clients send QUIC to it)."
  value       = aws_security_group.nlb.id
}

output "server_security_group_id" {
  description = "Security group of the block-server instances."
  value       = aws_security_group.servers.id
}

output "asg_name" {
  description = "Auto-scaling group of the block servers."
  value       = aws_autoscaling_group.blocks.name
}
