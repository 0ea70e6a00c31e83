# Secrets Manager change events for the DSO operator: an EventBridge rule on the default bus
# sends them to an SQS queue that the operator long-polls (--events-queue-url, chart value
# operator.events.queueUrl). One per region that holds secrets DsoSecrets name. The same as
# eventbridge-sqs.cfn.yaml; see docs/rotation.md.

variable "operator_role_arn" {
  description = "IAM role of the dso-operator service account (IRSA or Pod Identity)"
  type        = string
}

resource "aws_sqs_queue" "dso_events" {
  name                       = "dso-secret-events"
  message_retention_seconds  = 3600 # an event only says "look again"
  receive_wait_time_seconds  = 20
  sqs_managed_sse_enabled    = true
}

resource "aws_cloudwatch_event_rule" "dso_events" {
  name        = "dso-secret-events"
  description = "Secrets Manager changes that can move a version DSO follows"
  event_pattern = jsonencode({
    source = ["aws.secretsmanager"]
    "detail-type" = [
      "AWS API Call via CloudTrail",
      "AWS Service Event via CloudTrail",
      "Secret Label Updated",
    ]
    detail = {
      eventName = [
        "PutSecretValue", "UpdateSecretVersionStage", "RotateSecret", "UpdateSecret",
        "CreateSecret", "DeleteSecret", "RestoreSecret", "RotationSucceeded",
        "RotationAbandoned", "EndSecretVersionDelete", "ReplicateSecretToRegions",
        "RemoveRegionsFromReplication",
        { exists = false }, # "Secret Label Updated" has no eventName
      ]
    }
  })
}

resource "aws_cloudwatch_event_target" "dso_events" {
  rule      = aws_cloudwatch_event_rule.dso_events.name
  target_id = "dso-operator"
  arn       = aws_sqs_queue.dso_events.arn
}

resource "aws_sqs_queue_policy" "dso_events" {
  queue_url = aws_sqs_queue.dso_events.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "EventBridgeSends"
        Effect    = "Allow"
        Principal = { Service = "events.amazonaws.com" }
        Action    = "sqs:SendMessage"
        Resource  = aws_sqs_queue.dso_events.arn
        Condition = { ArnEquals = { "aws:SourceArn" = aws_cloudwatch_event_rule.dso_events.arn } }
      },
      {
        Sid       = "OperatorReads"
        Effect    = "Allow"
        Principal = { AWS = var.operator_role_arn }
        Action    = ["sqs:ReceiveMessage", "sqs:DeleteMessage"]
        Resource  = aws_sqs_queue.dso_events.arn
      },
    ]
  })
}

output "queue_url" {
  description = "the operator's --events-queue-url (chart value operator.events.queueUrl)"
  value       = aws_sqs_queue.dso_events.id
}
