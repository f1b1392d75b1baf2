# chaosec2panic: upload the memory dump to S3, for analysis with WinDbg or crash, with
# Write-S3Object (AWS Tools for PowerShell) or else the AWS CLI. The instance's role must allow
# s3:PutObject there. Prints the destination, the file with its size, and why the upload
# failed. Always exits 0.
# Arguments (set before this text by the caller): DUMP_FILE, BUCKET, KEY (the folder, ending in /).
$ErrorActionPreference = 'Stop'
$file = ''
$err = ''
try {
  $f = Get-Item -LiteralPath $env:DUMP_FILE
  $key = $env:KEY + $f.Name
  if (Get-Command Write-S3Object -ErrorAction SilentlyContinue) {
    Write-S3Object -BucketName $env:BUCKET -Key $key -File $f.FullName
  } else {
    $dest = "s3://" + $env:BUCKET + "/" + $key
    # Windows PowerShell passes a double quote inside a native command's argument on unescaped:
    # it would split the destination into more arguments for aws.
    if ($dest.Contains('"')) { throw ("the destination " + $dest + " holds a double quote: not passed on") }
    $out = & aws s3 cp --only-show-errors --no-progress $f.FullName $dest 2>&1
    if ($LASTEXITCODE -ne 0) { throw ("aws s3 cp exited " + $LASTEXITCODE + ": " + ($out -join ' ')) }
  }
  $file = $f.Name + '|' + $f.Length
} catch {
  $err = $_.Exception.Message -replace '\s+', ' '
}
Write-Output "schema=collect_crash_dump/1"
Write-Output ("dest=s3://" + $env:BUCKET + "/" + $env:KEY)
Write-Output ("file=" + $file)
Write-Output ("error=" + $err)
Write-Output "end=ok"
exit 0
