# chaosec2panic: describe the memory dump and the last BugCheck event. Of the dump, send what
# the dump reader judges it by: its header pages (the first 12 KiB, gzip then base64) and its
# last 16 bytes. Always exits 0.
$ErrorActionPreference = 'SilentlyContinue'
$os = Get-CimInstance Win32_OperatingSystem
$cc = Get-ItemProperty 'HKLM:\SYSTEM\CurrentControlSet\Control\CrashControl'
$dumpFile = [Environment]::ExpandEnvironmentVariables([string]$cc.DumpFile)
Write-Output "schema=crash_dumps/2"
Write-Output ("boot_id=" + $os.LastBootUpTime.ToUniversalTime().ToString('yyyyMMddTHHmmssZ'))
Write-Output ("kernel_release=" + $os.Version)
Write-Output ("dump_dir=" + (Split-Path -Parent $dumpFile))
$f = Get-Item $dumpFile
if ($f) {
  $fs = [IO.File]::OpenRead($f.FullName)
  $head = New-Object byte[] ([Math]::Min(12288, $fs.Length)); $read = $fs.Read($head, 0, $head.Length)
  [void]$fs.Seek([Math]::Max(0, $fs.Length - 16), 'Begin')
  $tail = New-Object byte[] ([Math]::Min(16, $fs.Length)); [void]$fs.Read($tail, 0, $tail.Length)
  $fs.Close()
  $packed = New-Object IO.MemoryStream
  $gzip = New-Object IO.Compression.GZipStream($packed, [IO.Compression.CompressionMode]::Compress)
  $gzip.Write($head, 0, $read); $gzip.Close()
  $hex = { param($b) -join ($b | ForEach-Object { $_.ToString('x2') }) }
  $mtime = [DateTimeOffset]::new($f.LastWriteTimeUtc).ToUnixTimeSeconds()
  Write-Output ("dump=" + $f.FullName + "|" + $f.Length + "|" + $mtime + "||" + [Convert]::ToBase64String($packed.ToArray()) + "|" + (& $hex $tail))
}
$ev = Get-WinEvent -FilterHashtable @{LogName='System'; Id=1001; ProviderName='Microsoft-Windows-WER-SystemErrorReporting'} -MaxEvents 1
if ($ev) { Write-Output ("bugcheck_event=" + [DateTimeOffset]::new($ev.TimeCreated.ToUniversalTime()).ToUnixTimeSeconds()) }
Write-Output "end=ok"
exit 0
