# chaosec2panic: describe the memory dump and the last BugCheck event. Always exits 0.
$ErrorActionPreference = 'SilentlyContinue'
$os = Get-CimInstance Win32_OperatingSystem
$cc = Get-ItemProperty 'HKLM:\SYSTEM\CurrentControlSet\Control\CrashControl'
$dumpFile = [Environment]::ExpandEnvironmentVariables([string]$cc.DumpFile)
Write-Output "schema=crash_dumps/1"
Write-Output ("boot_id=" + $os.LastBootUpTime.ToUniversalTime().ToString('yyyyMMddTHHmmssZ'))
Write-Output ("kernel_release=" + $os.Version)
Write-Output ("dump_dir=" + (Split-Path -Parent $dumpFile))
$f = Get-Item $dumpFile
if ($f) {
  $fs = [IO.File]::OpenRead($f.FullName)
  $head = New-Object byte[] 512; [void]$fs.Read($head, 0, 512)
  [void]$fs.Seek([Math]::Max(0, $fs.Length - 16), 'Begin')
  $tail = New-Object byte[] ([Math]::Min(16, $fs.Length)); [void]$fs.Read($tail, 0, $tail.Length)
  $fs.Close()
  $hex = { param($b) -join ($b | ForEach-Object { $_.ToString('x2') }) }
  $mtime = [DateTimeOffset]::new($f.LastWriteTimeUtc).ToUnixTimeSeconds()
  Write-Output ("dump=" + $f.FullName + "|" + $f.Length + "|" + $mtime + "|" + (& $hex $head) + "|" + (& $hex $tail))
}
$ev = Get-WinEvent -FilterHashtable @{LogName='System'; Id=1001; ProviderName='Microsoft-Windows-WER-SystemErrorReporting'} -MaxEvents 1
if ($ev) { Write-Output ("bugcheck_event=" + [DateTimeOffset]::new($ev.TimeCreated.ToUniversalTime()).ToUnixTimeSeconds()) }
Write-Output "end=ok"
exit 0
