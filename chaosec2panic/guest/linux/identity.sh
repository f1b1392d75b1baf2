# chaosec2panic: which boot this instance is in. Always exits 0.
boot_id="" uptime=""
read -r boot_id 2>/dev/null </proc/sys/kernel/random/boot_id
read -r uptime _ 2>/dev/null </proc/uptime
echo "schema=identity/1"
echo "boot_id=$boot_id"
echo "uptime=$uptime"
# Nanoseconds where date has %N; a date without it (busybox) leaves "%N": whole seconds.
echo "now=$(date -u +%s.%N)"
echo "end=ok"
exit 0
