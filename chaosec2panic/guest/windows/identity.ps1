# chaosec2panic: which boot this instance is in. Always exits 0.
$os = Get-CimInstance Win32_OperatingSystem
Write-Output "schema=identity/1"
Write-Output ("boot_id=" + $os.LastBootUpTime.ToUniversalTime().ToString('yyyyMMddTHHmmssZ'))
$now = [DateTimeOffset]::UtcNow
Write-Output ("uptime=" + ($now.UtcDateTime - $os.LastBootUpTime.ToUniversalTime()).TotalSeconds.ToString('F3', [Globalization.CultureInfo]::InvariantCulture))
Write-Output ("now=" + ($now.ToUnixTimeMilliseconds() / 1000).ToString('F3', [Globalization.CultureInfo]::InvariantCulture))
Write-Output "end=ok"
exit 0
