# chaosec2panic: report whether this Windows instance writes a memory dump on an NMI.
# Prints key=value lines and always exits 0 (3010 would ask the SSM agent to reboot).
$ErrorActionPreference = 'SilentlyContinue'
$os = Get-CimInstance Win32_OperatingSystem
$cc = Get-ItemProperty 'HKLM:\SYSTEM\CurrentControlSet\Control\CrashControl'
$dumpFile = [Environment]::ExpandEnvironmentVariables([string]$cc.DumpFile)
$drive = (Split-Path -Qualifier $dumpFile)
$disk = Get-CimInstance Win32_LogicalDisk -Filter "DeviceID='$drive'"
Write-Output "schema=kdump_status/1"
Write-Output ("boot_id=" + $os.LastBootUpTime.ToUniversalTime().ToString('yyyyMMddTHHmmssZ'))
Write-Output ("uptime=" + [int]((Get-Date) - $os.LastBootUpTime).TotalSeconds)
Write-Output ("kernel_release=" + $os.Version)
Write-Output "machine=x86_64"
Write-Output "os_id=windows"
Write-Output ("os_version=" + $os.Version)
Write-Output ("mem_total_kb=" + $os.TotalVisibleMemorySize)
Write-Output ("crash_dump_enabled=" + $cc.CrashDumpEnabled)
Write-Output ("nmi_crash_dump=" + $cc.NMICrashDump)
Write-Output ("auto_reboot=" + $cc.AutoReboot)
Write-Output ("dump_file=" + $dumpFile)
Write-Output ("dump_dir=" + (Split-Path -Parent $dumpFile))
Write-Output ("dump_dir_free_kb=" + [int64]($disk.FreeSpace / 1024))
Write-Output "end=ok"
exit 0
