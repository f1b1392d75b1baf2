"""The lab's stand-in for the AWS CLI: ``aws s3 cp [--recursive] SOURCE s3://BUCKET/KEY``, with
boto3, to the endpoint the lab gives its guests (AWS_ENDPOINT_URL). Anything else, or no lab
endpoint, is an error: it never reaches real AWS.

Not imported: the lab copies it into each guest's /sim-bin."""

import os
import sys
from pathlib import Path

OPTIONS = {"--recursive", "--only-show-errors", "--no-progress"}


def err(text, code):
    print(text, file=sys.stderr)
    sys.exit(code)


args = sys.argv[1:]
words = [a for a in args if not a.startswith("--")]
options = set(args) - set(words)
if words[:2] != ["s3", "cp"] or len(words) != 4 or not words[3].startswith("s3://") or options - OPTIONS:
    err(f"aws {' '.join(args)}: the lab's aws does only s3 cp [--recursive] SOURCE s3://BUCKET/KEY", 252)
if not os.environ.get("AWS_ENDPOINT_URL"):
    err("aws: no AWS_ENDPOINT_URL: the lab's aws uploads only to a lab", 255)
source = Path(words[2])
if not source.exists():
    err(f"The user-provided path {source} does not exist.", 255)
# boto3 only once the arguments are known good: a refusal answers at once.
import boto3  # noqa: E402
from boto3.exceptions import S3UploadFailedError  # noqa: E402
from botocore.exceptions import BotoCoreError, ClientError  # noqa: E402

bucket, _, key = words[3][len("s3://") :].partition("/")
if "--recursive" in options:
    folder = key if not key or key.endswith("/") else key + "/"
    pairs = [(p, folder + p.relative_to(source).as_posix()) for p in sorted(source.rglob("*")) if p.is_file()]
else:
    pairs = [(source, key + source.name if not key or key.endswith("/") else key)]
s3 = boto3.client("s3")
failed = 0
for path, name in pairs:
    try:
        s3.upload_file(str(path), bucket, name)
    except (S3UploadFailedError, ClientError, BotoCoreError, OSError) as exc:
        print(f"upload failed: {path} to s3://{bucket}/{name} {exc}", file=sys.stderr)
        failed += 1
        continue
    if "--only-show-errors" not in options:
        print(f"upload: {path} to s3://{bucket}/{name}")
sys.exit(1 if failed else 0)
