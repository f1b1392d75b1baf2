# chaosec2panic: which boot this instance is in, and when the agent running this script started
# in it. Always exits 0.
boot_id="" uptime="" agent_unit="" agent_active_us=""
read -r boot_id 2>/dev/null </proc/sys/kernel/random/boot_id
read -r uptime _ 2>/dev/null </proc/uptime
# The systemd unit this script runs in is the agent's (a command runs in its cgroup): cgroup v2
# "0::/system.slice/amazon-ssm-agent.service", v1 "1:name=systemd:/system.slice/....service".
agent_unit=$(sed -n 's#^[0-9]*:\(name=systemd\)\{0,1\}:.*/\([^/]*\.service\)$#\2#p' /proc/self/cgroup 2>/dev/null | head -n 1)
if [ -n "$agent_unit" ] && command -v systemctl >/dev/null 2>&1; then
    # Microseconds of CLOCK_MONOTONIC since the boot; "show -p" (not --value: systemd 219 has none)
    agent_active_us=$(systemctl show -p ActiveEnterTimestampMonotonic "$agent_unit" 2>/dev/null |
        sed -n 's/^ActiveEnterTimestampMonotonic=\([0-9]*\)$/\1/p')
fi
#include clock_synced
echo "schema=identity/1"
echo "boot_id=$boot_id"
echo "uptime=$uptime"
echo "agent_unit=$agent_unit"
echo "agent_active_us=$agent_active_us"
# Nanoseconds where date has %N; a date without it (busybox) leaves "%N": whole seconds.
echo "now=$(date -u +%s.%N)"
echo "clock_synced=$clock_synced"
echo "end=ok"
exit 0
