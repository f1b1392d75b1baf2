# chaosec2panic: which boot this instance is in. Always exits 0.
$os = Get-CimInstance Win32_OperatingSystem
Write-Output "schema=identity/1"
Write-Output ("boot_id=" + $os.LastBootUpTime.ToUniversalTime().ToString('yyyyMMddTHHmmssZ'))
Write-Output ("uptime=" + [int]((Get-Date) - $os.LastBootUpTime).TotalSeconds)
Write-Output ("now=" + [DateTimeOffset]::UtcNow.ToUnixTimeSeconds())
Write-Output "end=ok"
exit 0
