# chaosec2panic: arm what Windows does on an NMI (the CrashControl settings), or put them back.
# ACTION=arm: CrashDumpEnabled = CRASH_DUMP_ENABLED (1 complete, 2 kernel, 7 automatic),
#   NMICrashDump = 1, AutoReboot = 1; values already as wanted are not touched.
# ACTION=restore: each setting named in RESTORE back to BEFORE_<setting>, a whole number (empty:
#   the value was absent, so it is removed); an unknown setting or any other value refuses the
#   whole restore before anything is changed. Any other ACTION only reports. The changes take
#   effect at the next boot. Prints every setting before and after as key=value lines and always
#   exits 0 (3010 would ask the SSM agent to reboot).
$ErrorActionPreference = 'SilentlyContinue'
$key = 'HKLM:\SYSTEM\CurrentControlSet\Control\CrashControl'
$names = @{ crash_dump_enabled = 'CrashDumpEnabled'; nmi_crash_dump = 'NMICrashDump'; auto_reboot = 'AutoReboot' }
$action = [string]$env:ACTION
if (-not $action) { $action = 'report' }
$err = ''
$os = Get-CimInstance Win32_OperatingSystem
$before = Get-ItemProperty $key
try {
  if ($action -eq 'arm') {
    if (@('1', '2', '7') -notcontains [string]$env:CRASH_DUMP_ENABLED) {
      throw ("CRASH_DUMP_ENABLED must be 1, 2 or 7, got '" + $env:CRASH_DUMP_ENABLED + "'")
    }
    $want = [ordered]@{ CrashDumpEnabled = [int]$env:CRASH_DUMP_ENABLED; NMICrashDump = 1; AutoReboot = 1 }
    foreach ($n in $want.Keys) {
      if ([string]$before.$n -ne [string]$want[$n]) {
        Set-ItemProperty -Path $key -Name $n -Value $want[$n] -Type DWord -ErrorAction Stop
      }
    }
  } elseif ($action -eq 'restore') {
    # Every name and value is checked before anything is changed.
    $restore = [ordered]@{}
    foreach ($s in ([string]$env:RESTORE).Split(' ', [StringSplitOptions]::RemoveEmptyEntries)) {
      $n = $names[$s]
      if (-not $n) { throw ("unknown setting " + $s + " (known: crash_dump_enabled nmi_crash_dump auto_reboot)") }
      $v = [string][Environment]::GetEnvironmentVariable('BEFORE_' + $s)
      if ($v -cnotmatch '\A(-?[0-9]{1,10})?\z') {
        throw ("BEFORE_" + $s + " must be a whole number, or empty for a value that was absent; got '" +
          $v + "': nothing was changed")
      }
      $restore[$n] = $v
    }
    foreach ($n in $restore.Keys) {
      $v = $restore[$n]
      if ($v -eq '') { Remove-ItemProperty -Path $key -Name $n }
      else { Set-ItemProperty -Path $key -Name $n -Value ([int]$v) -Type DWord -ErrorAction Stop }
    }
  } elseif ($action -ne 'report') {
    throw ("unknown ACTION " + $action + " (arm, restore or report)")
  }
} catch {
  $err = $_.Exception.Message -replace '[\r\n]+', ' '
}
$after = Get-ItemProperty $key
Write-Output "schema=kdump_settings/1"
Write-Output ("action=" + $action)
Write-Output ("boot_id=" + $os.LastBootUpTime.ToUniversalTime().ToString('yyyyMMddTHHmmssZ'))
Write-Output ("uptime=" + [int]((Get-Date) - $os.LastBootUpTime).TotalSeconds)
Write-Output "os_id=windows"
Write-Output ("crash_dump_enabled_before=" + $before.CrashDumpEnabled)
Write-Output ("crash_dump_enabled_after=" + $after.CrashDumpEnabled)
Write-Output ("nmi_crash_dump_before=" + $before.NMICrashDump)
Write-Output ("nmi_crash_dump_after=" + $after.NMICrashDump)
Write-Output ("auto_reboot_before=" + $before.AutoReboot)
Write-Output ("auto_reboot_after=" + $after.AutoReboot)
Write-Output ("error=" + $err)
Write-Output "end=ok"
exit 0
