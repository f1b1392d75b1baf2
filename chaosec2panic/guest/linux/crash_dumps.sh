# chaosec2panic: list crash dumps with their sizes, times, first/last bytes and the panic
# lines of the dmesg saved beside each. Reads only directory listings, a few hundred bytes
# per dump and a few lines of text. Always exits 0.
# Arguments (set before this text by the caller): DUMP_DIR, MAX_DUMPS.
R="${CHAOSEC2PANIC_ROOT:-}"
DUMP_DIR="${DUMP_DIR:-/var/crash}"
MAX_DUMPS="${MAX_DUMPS:-5}"
echo "schema=crash_dumps/1"
echo "boot_id=$(head -n 1 "$R/proc/sys/kernel/random/boot_id" 2>/dev/null)"
echo "kernel_release=$(head -n 1 "$R/proc/sys/kernel/osrelease" 2>/dev/null)"
echo "dump_dir=$DUMP_DIR"
hex() { od -A n -t x1 -v "$@" 2>/dev/null | tr -d ' \n'; }
count=0
for f in $(ls -1t "$R$DUMP_DIR"/*/vmcore "$R$DUMP_DIR"/*/vmcore-incomplete "$R$DUMP_DIR"/*/dump.[0-9]* "$R$DUMP_DIR"/*/dump-incomplete 2>/dev/null); do
  [ -f "$f" ] || continue
  count=$((count + 1))
  [ "$count" -le "$MAX_DUMPS" ] || break
  size=$(stat -c %s "$f" 2>/dev/null)
  mtime=$(stat -c %Y "$f" 2>/dev/null)
  tail_bytes=16
  [ "${size:-0}" -ge 16 ] || tail_bytes=${size:-0}
  panic=""
  for m in "$(dirname "$f")"/vmcore-dmesg.txt "$(dirname "$f")"/dmesg.[0-9]* "$(dirname "$f")"/dmesg; do
    [ -f "$m" ] || continue
    panic=$(grep -E "NMI received for unknown reason|Kernel panic - not syncing|Dazed and confused" "$m" \
      2>/dev/null | head -n 4 | hex)
    [ -n "$panic" ] || panic=00
    break
  done
  echo "dump=${f#"$R"}|$size|$mtime|$(head -c 512 "$f" | hex)|$(tail -c "$tail_bytes" "$f" | hex)|$panic"
done
echo "end=ok"
exit 0
