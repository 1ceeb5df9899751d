# The checkpoint bucket: versioned, SSE-KMS with a bucket key (one KMS call
# per bucket key, not per ranged GET of a block), public access blocked,
# bucket-owner-enforced ownership, TLS-only, and deletes denied to everyone
# but the operator role.

variable "name" {
  description = "Name prefix of the bucket and its KMS key."
  type        = string
}

variable "account_id" {
  description = "Account that owns the KMS key."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{12}$", var.account_id))
    error_message = "account_id must be 12 digits."
  }
}

variable "partition" {
  description = "AWS partition (aws, aws-us-gov, aws-cn)."
  type        = string
  default     = "aws"
}

variable "operator_role_arn" {
  description = "The only principal allowed to delete objects or object versions."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$", var.operator_role_arn))
    error_message = "operator_role_arn must be an IAM role ARN."
  }
}

variable "checkpoint_prefix" {
  description = "Key prefix thaw writes checkpoints under (scope of the expiration rule)."
  type        = string
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which noncurrent object versions are removed."
  type        = number

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1
    error_message = "noncurrent_version_expiration_days must be at least 1."
  }
}

variable "checkpoint_expiration_days" {
  description = "Days after which current checkpoint objects expire; 0 turns it off."
  type        = number
  default     = 0

  validation {
    condition     = var.checkpoint_expiration_days >= 0
    error_message = "checkpoint_expiration_days must be 0 (off) or more."
  }
}

resource "aws_kms_key" "bucket" {
  description             = "${var.name}: checkpoint objects at rest"
  enable_key_rotation     = true
  deletion_window_in_days = 30

  # The account administers the key; roles get kms:Decrypt/GenerateDataKey
  # through their IAM policies, limited to calls made by S3.
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "AccountAdministersKeyThroughIAM"
      Effect    = "Allow"
      Principal = { AWS = "arn:${var.partition}:iam::${var.account_id}:root" }
      Action    = "kms:*"
      Resource  = "*"
    }]
  })
}

resource "aws_kms_alias" "bucket" {
  name          = "alias/${var.name}-checkpoints"
  target_key_id = aws_kms_key.bucket.key_id
}

resource "aws_s3_bucket" "checkpoints" {
  #checkov:skip=CKV_AWS_18:Server access logs would log every ranged GET of a 64 KiB block (millions per fleet restore); audit object access with CloudTrail S3 data events instead.
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost and restores run in one region; replicate per deployment if a regional outage must be survived.
  #checkov:skip=CKV2_AWS_62:No consumer of object events exists; thaw lists checkpoints by their manifests (written last).
  bucket_prefix = "${var.name}-checkpoints-"
  force_destroy = false
}

resource "aws_s3_bucket_ownership_controls" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "checkpoints" {
  bucket                  = aws_s3_bucket.checkpoints.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.bucket.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id

  # Versioning must be on before noncurrent-version rules mean anything.
  depends_on = [aws_s3_bucket_versioning.checkpoints]

  rule {
    id     = "noncurrent-versions-and-stale-uploads"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    # Segments are uploaded in 16 MiB multipart parts; a crashed checkpoint
    # leaves parts that are billed until aborted.
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }

    expiration {
      expired_object_delete_marker = true
    }
  }

  dynamic "rule" {
    for_each = var.checkpoint_expiration_days > 0 ? [var.checkpoint_expiration_days] : []

    content {
      id     = "expire-old-checkpoints"
      status = "Enabled"

      filter {
        prefix = "${var.checkpoint_prefix}/"
      }

      expiration {
        days = rule.value
      }

      abort_incomplete_multipart_upload {
        days_after_initiation = 7
      }
    }
  }
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.checkpoints.arn, "${aws_s3_bucket.checkpoints.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid       = "DenyOldTLS"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.checkpoints.arn, "${aws_s3_bucket.checkpoints.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }

  # A checkpoint exists once its manifest does, and thaw writes manifests with
  # a create-only PutObject (If-None-Match: *). Refusing any other manifest
  # write means no role can replace a manifest, signed or not; segments may be
  # overwritten by a checkpoint host, which can only make restores of that
  # checkpoint fail verification (blocks are checked against the signed
  # manifest) and versioning keeps the previous object.
  statement {
    sid       = "ManifestsAreCreateOnly"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.checkpoints.arn}/${var.checkpoint_prefix}/checkpoints/*/manifest"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Null"
      variable = "s3:if-none-match"
      values   = ["true"]
    }
  }

  statement {
    sid       = "OnlyTheOperatorDeletes"
    effect    = "Deny"
    actions   = ["s3:DeleteObject", "s3:DeleteObjectVersion"]
    resources = ["${aws_s3_bucket.checkpoints.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "ArnNotEquals"
      variable = "aws:PrincipalArn"
      values   = [var.operator_role_arn]
    }
  }
}

resource "aws_s3_bucket_policy" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id
  policy = data.aws_iam_policy_document.bucket.json

  depends_on = [aws_s3_bucket_public_access_block.checkpoints]
}

output "bucket_name" {
  description = "Name of the checkpoint bucket."
  value       = aws_s3_bucket.checkpoints.bucket
}

output "bucket_arn" {
  description = "ARN of the checkpoint bucket."
  value       = aws_s3_bucket.checkpoints.arn
}

output "kms_key_arn" {
  description = "ARN of the KMS key encrypting checkpoints."
  value       = aws_kms_key.bucket.arn
}
