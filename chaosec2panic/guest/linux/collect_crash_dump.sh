# chaosec2panic: upload the directory of one crash dump to S3 with the AWS CLI (aws s3 cp
# --recursive), for analysis with crash. The instance's role must allow s3:PutObject there.
# Prints the destination, each file with its size, and why the upload failed. Always exits 0.
# Arguments (set before this text by the caller): DUMP_FILE (the dump, as crash_dumps lists it),
# BUCKET, KEY (the folder the directory's files go to, ending in /).
dir=$(dirname "$DUMP_FILE")
dest="s3://$BUCKET/$KEY"
error=""
echo "schema=collect_crash_dump/1"
echo "dest=$dest"
if [ ! -f "$DUMP_FILE" ]; then
  error="the dump $DUMP_FILE is not there any more"
elif ! command -v aws >/dev/null 2>&1; then
  error="the AWS CLI (aws) is not installed: install it (AWS CLI v2, or the awscli package)"
else
  for f in "$dir"/*; do
    [ -f "$f" ] && echo "file=${f#"$dir"/}|$(stat -c %s "$f")"
  done
  out=$(aws s3 cp --recursive --only-show-errors --no-progress "$dir" "$dest" 2>&1) ||
    error="aws s3 cp exited $?: $(printf '%s' "$out" | tr '\n' ' ' | cut -c 1-1000)"
fi
echo "error=$error"
echo "end=ok"
exit 0
