#!/bin/sh
# One-shot (compose service minio-ray-user): the MinIO user the Ray containers hold instead of the root keys.
# Its policy reaches only the artifacts bucket (MLFLOW_BUCKET): list it, read, write and delete its objects,
# multipart uploads; no other bucket, no admin action. Idempotent: a second run sets the password from .env again.
set -eu
: "${MINIO_URL:=http://minio:9000}" "${MLFLOW_BUCKET:=mlflow}"
if [ "$MINIO_RAY_USER" = "$MINIO_ROOT_USER" ]; then
  echo "MINIO_RAY_USER must not be the root user $MINIO_ROOT_USER: the Ray containers get a bucket-scoped key" >&2
  exit 1
fi
policy="${TMPDIR:-/tmp}/ray-artifacts-policy.json"
printf '{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
   "Resource": ["arn:aws:s3:::%s"]},
  {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                                 "s3:ListMultipartUploadParts"],
   "Resource": ["arn:aws:s3:::%s/*"]}]}\n' "$MLFLOW_BUCKET" "$MLFLOW_BUCKET" > "$policy"
mc alias set local "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc admin policy create local ray-artifacts "$policy"
mc admin user add local "$MINIO_RAY_USER" "$MINIO_RAY_PASSWORD"
case "$(mc admin user info local "$MINIO_RAY_USER" --json)" in
  *ray-artifacts*) ;;  # attached by an earlier run (attaching again is an error)
  *) mc admin policy attach local ray-artifacts --user "$MINIO_RAY_USER" ;;
esac
echo "MinIO user $MINIO_RAY_USER: policy ray-artifacts (bucket $MLFLOW_BUCKET only)"
