# Least-privilege roles. Checkpoint hosts read and write checkpoint objects
# (PutObject, multipart); restore hosts and block servers only list and read;
# none of them may delete (no s3:Delete* here, and the bucket policy denies
# deletes to every principal but the operator role).

variable "name" {
  description = "Name prefix of the roles and instance profiles."
  type        = string
}

variable "partition" {
  description = "AWS partition (aws, aws-us-gov, aws-cn)."
  type        = string
  default     = "aws"
}

variable "region" {
  description = "Region of the bucket (S3 is the only service that may use the bucket key for these roles)."
  type        = string
}

variable "bucket_arn" {
  description = "ARN of the checkpoint bucket."
  type        = string
}

variable "bucket_kms_key_arn" {
  description = "KMS key of the checkpoint bucket."
  type        = string
}

variable "checkpoint_prefix" {
  description = "Key prefix the roles are confined to."
  type        = string
}

variable "binary_object_arn" {
  description = "ARN of the thaw binary object every instance downloads at boot."
  type        = string
}

variable "block_server_secret_arn" {
  description = "Secret with the block server's TLS material."
  type        = string
}

variable "agent_secret_arn" {
  description = "Secret with the fetch agent's TLS material."
  type        = string
}

variable "pki_kms_key_arn" {
  description = "KMS key of the TLS secrets."
  type        = string
}

variable "operator_principal_arns" {
  description = "Principals that may assume the operator role."
  type        = list(string)

  validation {
    condition     = length(var.operator_principal_arns) > 0
    error_message = "operator_principal_arns needs at least one principal."
  }
}

variable "operator_require_mfa" {
  description = "Whether assuming the operator role requires MFA."
  type        = bool
  default     = true
}

variable "enable_ssm_session_manager" {
  description = "Attach AmazonSSMManagedInstanceCore to the instance roles."
  type        = bool
  default     = true
}

locals {
  objects = "${var.bucket_arn}/${var.checkpoint_prefix}/*"
  # object_store lists with the store prefix (and sub-prefixes of it).
  list_prefixes = [var.checkpoint_prefix, "${var.checkpoint_prefix}/*"]
  instance_roles = {
    checkpoint_host = "Checkpoint hosts: thaw vm checkpoint writes checkpoints"
    restore_host    = "Restore hosts: thaw vm restore and the fetch agent read checkpoints"
    block_server    = "Block servers: thaw block-server reads checkpoints"
  }
}

data "aws_iam_policy_document" "ec2_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "instance" {
  for_each = local.instance_roles

  name_prefix        = "${var.name}-${replace(each.key, "_", "-")}-"
  description        = each.value
  assume_role_policy = data.aws_iam_policy_document.ec2_trust.json
}

resource "aws_iam_instance_profile" "instance" {
  for_each = local.instance_roles

  name_prefix = "${var.name}-${replace(each.key, "_", "-")}-"
  role        = aws_iam_role.instance[each.key].name
}

resource "aws_iam_role_policy_attachment" "ssm" {
  for_each = var.enable_ssm_session_manager ? local.instance_roles : {}

  role       = aws_iam_role.instance[each.key].name
  policy_arn = "arn:${var.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

# Reading checkpoints: everyone with an instance role.
data "aws_iam_policy_document" "read" {
  statement {
    sid       = "ListCheckpoints"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = local.list_prefixes
    }
  }

  statement {
    sid       = "ReadCheckpoints"
    actions   = ["s3:GetObject"]
    resources = [local.objects]
  }

  statement {
    sid       = "DecryptCheckpointsThroughS3"
    actions   = ["kms:Decrypt"]
    resources = [var.bucket_kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }

  statement {
    sid       = "DownloadThawBinary"
    actions   = ["s3:GetObject"]
    resources = [var.binary_object_arn]
  }
}

# Writing checkpoints: segments by multipart upload, manifests by a
# create-only PutObject. AbortMultipartUpload only drops unfinished parts.
data "aws_iam_policy_document" "write" {
  source_policy_documents = [data.aws_iam_policy_document.read.json]

  statement {
    sid       = "WriteCheckpoints"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    resources = [local.objects]
  }

  statement {
    sid       = "ListOwnUploads"
    actions   = ["s3:ListBucketMultipartUploads"]
    resources = [var.bucket_arn]
  }

  statement {
    sid       = "EncryptCheckpointsThroughS3"
    actions   = ["kms:GenerateDataKey"]
    resources = [var.bucket_kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "tls_secret" {
  for_each = {
    block_server = var.block_server_secret_arn
    restore_host = var.agent_secret_arn
  }

  statement {
    sid       = "ReadOwnTlsSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [each.value]
  }

  statement {
    sid       = "DecryptTlsSecretThroughSecretsManager"
    actions   = ["kms:Decrypt"]
    resources = [var.pki_kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "checkpoints" {
  for_each = local.instance_roles

  name   = each.key == "checkpoint_host" ? "read-write-checkpoints" : "read-checkpoints"
  role   = aws_iam_role.instance[each.key].id
  policy = each.key == "checkpoint_host" ? data.aws_iam_policy_document.write.json : data.aws_iam_policy_document.read.json
}

resource "aws_iam_role_policy" "tls_secret" {
  for_each = data.aws_iam_policy_document.tls_secret

  name   = "read-tls-secret"
  role   = aws_iam_role.instance[each.key].id
  policy = each.value.json
}

# The operator: the only principal the bucket policy lets delete objects
# (retiring checkpoints after a reference check, emptying the bucket for
# teardown).
data "aws_iam_policy_document" "operator_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "AWS"
      identifiers = var.operator_principal_arns
    }

    dynamic "condition" {
      for_each = var.operator_require_mfa ? [true] : []

      content {
        test     = "Bool"
        variable = "aws:MultiFactorAuthPresent"
        values   = ["true"]
      }
    }
  }
}

resource "aws_iam_role" "operator" {
  name_prefix          = "${var.name}-operator-"
  description          = "thaw operator: may delete checkpoint objects and versions"
  assume_role_policy   = data.aws_iam_policy_document.operator_trust.json
  max_session_duration = 3600
}

data "aws_iam_policy_document" "operator" {
  statement {
    sid       = "ListBucket"
    actions   = ["s3:ListBucket", "s3:ListBucketVersions", "s3:ListBucketMultipartUploads"]
    resources = [var.bucket_arn]
  }

  statement {
    sid = "ManageObjects"
    actions = [
      "s3:GetObject",
      "s3:GetObjectVersion",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:DeleteObjectVersion",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${var.bucket_arn}/*"]
  }

  statement {
    sid       = "UseBucketKeyThroughS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.bucket_kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "operator" {
  name   = "manage-checkpoints"
  role   = aws_iam_role.operator.id
  policy = data.aws_iam_policy_document.operator.json
}

output "checkpoint_host_instance_profile_name" {
  description = "Instance profile of checkpoint hosts (read + write)."
  value       = aws_iam_instance_profile.instance["checkpoint_host"].name
}

output "restore_host_instance_profile_name" {
  description = "Instance profile of restore hosts (read, agent TLS secret)."
  value       = aws_iam_instance_profile.instance["restore_host"].name
}

output "block_server_instance_profile_name" {
  description = "Instance profile of block servers (read, server TLS secret)."
  value       = aws_iam_instance_profile.instance["block_server"].name
}

output "restore_host_role_arn" {
  description = "Role of restore hosts."
  value       = aws_iam_role.instance["restore_host"].arn
}

output "block_server_role_arn" {
  description = "Role of block servers."
  value       = aws_iam_role.instance["block_server"].arn
}

output "checkpoint_host_role_arn" {
  description = "Role of checkpoint hosts."
  value       = aws_iam_role.instance["checkpoint_host"].arn
}

output "operator_role_arn" {
  description = "The operator role."
  value       = aws_iam_role.operator.arn
}
