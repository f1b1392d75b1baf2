# chaosec2panic: list crash dumps with their sizes and times; of the newest, send what the dump
# readers judge it by: its first blocks (up to 64 KiB, gzip then base64), its last 16 bytes and
# the panic lines of the dmesg saved beside it. Reads only directory listings, the first blocks
# and the tail of one dump, and a few lines of text. Always exits 0.
# Arguments (set before this text by the caller): DUMP_DIR, MAX_DUMPS. Without DUMP_DIR, the
# dumps are looked for where kdump writes them: the directory its configuration names
# (kdump.conf path, kdump-tools KDUMP_COREDIR, SUSE KDUMP_SAVEDIR), else /var/crash.
R="${CHAOSEC2PANIC_ROOT:-}"
MAX_DUMPS="${MAX_DUMPS:-5}"
#include kdump_dir
if [ -n "${DUMP_DIR:-}" ]; then
  dump_dir_from=argument
else
  DUMP_DIR=$dump_dir
  dump_dir_from=kdump
fi
# SSM returns at most 24,000 characters of output: the first blocks get at most 16,000 of them,
# halved from 64 KiB until they fit, down to 8 KiB (8 KiB of any bytes fit).
BLOCKS_MAX=65536
BLOCKS_MIN=8192
BLOCKS_BUDGET=16000
echo "schema=crash_dumps/2"
echo "boot_id=$(head -n 1 "$R/proc/sys/kernel/random/boot_id" 2>/dev/null)"
echo "kernel_release=$(head -n 1 "$R/proc/sys/kernel/osrelease" 2>/dev/null)"
echo "dump_dir=$DUMP_DIR"
echo "dump_dir_from=$dump_dir_from"
hex() { od -A n -t x1 -v "$@" 2>/dev/null | tr -d ' \n'; }
blocks() {
  n=$BLOCKS_MAX
  while :; do
    b=$(head -c "$n" "$1" 2>/dev/null | gzip -c 2>/dev/null | base64 2>/dev/null | tr -d '\n')
    if [ "${#b}" -le "$BLOCKS_BUDGET" ] || [ "$n" -le "$BLOCKS_MIN" ]; then break; fi
    n=$((n / 2))
  done
  printf '%s' "$b"
}
count=0
for f in $(ls -1t "$R$DUMP_DIR"/*/vmcore "$R$DUMP_DIR"/*/vmcore-incomplete "$R$DUMP_DIR"/*/dump.[0-9]* "$R$DUMP_DIR"/*/dump-incomplete 2>/dev/null); do
  [ -f "$f" ] || continue
  count=$((count + 1))
  [ "$count" -le "$MAX_DUMPS" ] || break
  size=$(stat -c %s "$f" 2>/dev/null)
  mtime=$(stat -c %Y "$f" 2>/dev/null)
  if [ "$count" -gt 1 ]; then
    echo "dump=${f#"$R"}|$size|$mtime"
    continue
  fi
  tail_bytes=16
  [ "${size:-0}" -ge 16 ] || tail_bytes=${size:-0}
  panic=""
  for m in "$(dirname "$f")"/vmcore-dmesg.txt "$(dirname "$f")"/dmesg.[0-9]* "$(dirname "$f")"/dmesg; do
    [ -f "$m" ] || continue
    panic=$(grep -E "NMI received for unknown reason|Kernel panic - not syncing|Dazed and confused" "$m" \
      2>/dev/null | head -n 4 | cut -c 1-200 | hex)
    [ -n "$panic" ] || panic=00
    break
  done
  echo "dump=${f#"$R"}|$size|$mtime|$panic|$(blocks "$f")|$(tail -c "$tail_bytes" "$f" | hex)"
done
echo "end=ok"
exit 0
