# chaosec2panic: report whether this Linux instance will capture a crash dump on an NMI.
# Prints key=value lines and always exits 0 (the verdict is in the output, never in
# the exit code: 194 would ask the SSM agent to reboot the instance).

val() { [ -r "$1" ] && head -n 1 "$1" 2>/dev/null; }

echo "schema=kdump_status/1"
echo "boot_id=$(val /proc/sys/kernel/random/boot_id)"
echo "uptime=$(val /proc/uptime | cut -d ' ' -f 1)"
echo "now=$(date -u +%s.%N)"
#include clock_synced
echo "clock_synced=$clock_synced"
echo "kernel_release=$(val /proc/sys/kernel/osrelease)"
echo "machine=$(uname -m 2>/dev/null)"
if [ -r /etc/os-release ]; then
  echo "os_id=$(. /etc/os-release && echo "$ID")"
  echo "os_version=$(. /etc/os-release && echo "$VERSION_ID")"
fi
echo "crash_loaded=$(val /sys/kernel/kexec_crash_loaded)"
echo "crash_size=$(val /sys/kernel/kexec_crash_size)"
# The crashkernel= the kernel used (kdump-tools' grub.d file and /etc/default/grub may both have
# put one on the command line).
#include crashkernel
echo "cmdline_crashkernel=$(effective_crashkernel "$(val /proc/cmdline)")"
echo "unknown_nmi_panic=$(val /proc/sys/kernel/unknown_nmi_panic)"
echo "panic_timeout=$(val /proc/sys/kernel/panic)"
echo "mem_total_kb=$(grep '^MemTotal:' /proc/meminfo 2>/dev/null | tr -s ' ' | cut -d ' ' -f 2)"

#include kdump_dir
echo "dump_dir=$dump_dir"
echo "dump_dir_free_kb=$(df -P -k "$dump_dir" 2>/dev/null | tail -n 1 | tr -s ' ' | cut -d ' ' -f 4)"

if command -v kdumpctl >/dev/null 2>&1; then
  echo "kdump_tool=kdumpctl"
  case "$(kdumpctl status 2>&1)" in
    *"Kdump is operational"*) echo "kdump_service=operational" ;;
    *) echo "kdump_service=not-operational" ;;
  esac
elif command -v kdump-config >/dev/null 2>&1; then
  echo "kdump_tool=kdump-config"
  case "$(kdump-config status 2>&1)" in
    *"Not ready to kdump"*) echo "kdump_service=not-operational" ;;
    *"ready to kdump"*) echo "kdump_service=operational" ;;
    *) echo "kdump_service=not-operational" ;;
  esac
elif command -v systemctl >/dev/null 2>&1; then
  echo "kdump_tool=systemctl"
  if systemctl is-active --quiet kdump 2>/dev/null || systemctl is-active --quiet kdump-tools 2>/dev/null; then
    echo "kdump_service=operational"
  else
    echo "kdump_service=not-operational"
  fi
else
  echo "kdump_tool=none"
  echo "kdump_service=unknown"
fi
echo "end=ok"
exit 0
