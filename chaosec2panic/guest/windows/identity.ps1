# chaosec2panic: which boot this instance is in. Always exits 0.
$os = Get-CimInstance Win32_OperatingSystem
Write-Output "schema=identity/1"
Write-Output ("boot_id=" + $os.LastBootUpTime.ToUniversalTime().ToString('yyyyMMddTHHmmssZ'))
$now = [DateTimeOffset]::UtcNow
Write-Output ("uptime=" + ($now.UtcDateTime - $os.LastBootUpTime.ToUniversalTime()).TotalSeconds.ToString('F3', [Globalization.CultureInfo]::InvariantCulture))
Write-Output ("now=" + ($now.ToUnixTimeMilliseconds() / 1000).ToString('F3', [Globalization.CultureInfo]::InvariantCulture))
# Whether w32time keeps the clock synchronised (AWS's images: Amazon Time Sync): yes, no, or
# empty where w32tm does not answer.
$w32 = (w32tm /query /status 2>$null) -join "`n"
$synced = if (-not $w32) { '' } elseif ($w32 -match 'Leap Indicator: 3|Source: (Local CMOS Clock|Free-running System Clock)') { 'no' } else { 'yes' }
Write-Output ("clock_synced=" + $synced)
Write-Output "end=ok"
exit 0
