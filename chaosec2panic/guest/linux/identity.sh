# chaosec2panic: which boot this instance is in. Always exits 0.
R="${CHAOSEC2PANIC_ROOT:-}"
echo "schema=identity/1"
echo "boot_id=$(head -n 1 "$R/proc/sys/kernel/random/boot_id" 2>/dev/null)"
echo "uptime=$(cut -d ' ' -f 1 "$R/proc/uptime" 2>/dev/null)"
# Nanoseconds where date has %N; a date without it prints a literal N, read as whole seconds.
echo "now=$(date -u +%s.%N)"
echo "end=ok"
exit 0
