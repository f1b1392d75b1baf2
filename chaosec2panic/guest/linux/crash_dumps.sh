# chaosec2panic: list crash dumps with their sizes and times; of the newest, send what the dump
# readers judge it by: its first blocks (up to 64 KiB, gzip then base64), its last 16 bytes and
# the panic lines of the dmesg saved beside it; and the crash's own account: the lines of the
# crashed kernel's log around its last panic (crash_log, gzip then base64), read from the dmesg
# saved beside the dump, else out of the dump by makedumpfile --dump-dmesg (crash_log_error
# says why not, when neither can be read). Reads directory listings, the first blocks and the
# tail of one dump, and text; makedumpfile writes only into a temporary directory it removes.
# Always exits 0.
# Arguments (set before this text by the caller): DUMP_DIR, MAX_DUMPS. Without DUMP_DIR, the
# dumps are looked for where kdump writes them: the directory its configuration names
# (kdump.conf path, kdump-tools KDUMP_COREDIR, SUSE KDUMP_SAVEDIR), else /var/crash.
MAX_DUMPS="${MAX_DUMPS:-5}"
#include kdump_dir
if [ -n "${DUMP_DIR:-}" ]; then
  dump_dir_from=argument
else
  DUMP_DIR=$dump_dir
  dump_dir_from=kdump
fi
# SSM returns at most 24,000 characters of output: the first blocks get at most 16,000 of them,
# halved from 64 KiB until they fit, down to 8 KiB (8 KiB of any bytes fit). The rest, in the
# worst case (4 panic lines of 200 characters in hex, 4 older dumps, paths of 250 characters)
# takes under 4,000; the crash log gets at most 3,500, its window narrowed until it fits (12
# lines of 80 characters of any bytes fit).
BLOCKS_MAX=65536
BLOCKS_MIN=8192
BLOCKS_BUDGET=16000
CRASH_LOG_BUDGET=3500
CRASH_LOG_SHAPES="60x200 60x120 40x100 24x100 12x80"
# makedumpfile -R rebuilds a flattened dump into a file as large as the dump: only up to 1 GiB
# (a minute's command writes that much), and only where twice that and 256 MiB more are free.
REASSEMBLE_MAX_KB=1048576
REASSEMBLE_SPARE_KB=262144
PANIC_LINE="NMI received for unknown reason|Kernel panic - not syncing"
echo "schema=crash_dumps/3"
echo "boot_id=$(head -n 1 /proc/sys/kernel/random/boot_id 2>/dev/null)"
echo "kernel_release=$(head -n 1 /proc/sys/kernel/osrelease 2>/dev/null)"
echo "dump_dir=$DUMP_DIR"
echo "dump_dir_from=$dump_dir_from"
crash_tmp=""
trap 'if [ -n "$crash_tmp" ]; then rm -rf "$crash_tmp"; fi' EXIT
trap 'exit 0' HUP INT TERM
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
# The lines of log $1 around its last panic: from up to 5 lines before the last panic (or
# unknown NMI) line, $2 lines, each cut to $3 characters; without one, its last $2 lines.
window() {
  at=$(grep -n -E "$PANIC_LINE" "$1" 2>/dev/null | tail -n 1 | cut -d : -f 1)
  if [ -n "$at" ]; then
    from=$((at > 5 ? at - 5 : 1))
    sed -n "${from},$((from + $2 - 1))p" "$1" 2>/dev/null
  else
    tail -n "$2" "$1" 2>/dev/null
  fi | cut -c "1-$3"
}
# Send the window of log $3 as the crash log, read from $2 (source $1): the widest that fits.
send_log() {
  for shape in $CRASH_LOG_SHAPES; do
    packed=$(window "$3" "${shape%x*}" "${shape#*x}" | gzip -c 2>/dev/null | base64 2>/dev/null | tr -d '\n')
    [ "${#packed}" -gt "$CRASH_LOG_BUDGET" ] || break
  done
  echo "crash_log_source=$1"
  echo "crash_log_file=$2"
  echo "crash_log_shape=$shape"
  echo "crash_log=$packed"
}
# What makedumpfile said on failure (in $1): its first lines other than "makedumpfile Failed.".
said() { grep -v -e '^[[:space:]]*$' -e '^makedumpfile Failed' "$1" 2>/dev/null | head -n 2 | tr '\n' ' ' | cut -c 1-200; }
# The crash log of dump $1 (of $2 bytes) out of the dump itself, by makedumpfile --dump-dmesg
# (no debug symbols needed); a flattened dump is first rebuilt by makedumpfile -R.
dump_dmesg() {
  if ! command -v makedumpfile >/dev/null 2>&1; then
    echo "crash_log_error=not read: no dmesg file beside the dump, and makedumpfile (to read the log out of it) is not installed"
    return
  fi
  crash_tmp=$(mktemp -d "${TMPDIR:-/tmp}/chaosec2panic-crash-log.XXXXXX" 2>/dev/null) || crash_tmp=""
  if [ -z "$crash_tmp" ]; then
    echo "crash_log_error=not read: no dmesg file beside the dump, and mktemp -d failed: no temporary directory to read it into"
    return
  fi
  source_dump=$1
  if [ "$(head -c 12 "$1" 2>/dev/null | tr -d '\000')" = makedumpfile ]; then
    if [ "$2" -gt $((REASSEMBLE_MAX_KB * 1024)) ]; then
      echo "crash_log_error=not read: the dump is in the flattened format, and rebuilding it (makedumpfile -R) to read its log would write $2 bytes, more than the $((REASSEMBLE_MAX_KB / 1024)) MiB allowed"
      return
    fi
    need_kb=$(($2 / 1024 * 2 + REASSEMBLE_SPARE_KB))
    free=$(stat -f -c '%a %S' "$crash_tmp" 2>/dev/null)
    case "$free" in
      [0-9]*" "[0-9]*) free_kb=$((${free% *} * ${free#* } / 1024)) ;;
      *) free_kb=0 ;;
    esac
    if [ "$free_kb" -lt "$need_kb" ]; then
      echo "crash_log_error=not read: the dump is in the flattened format, and rebuilding it (makedumpfile -R) to read its log needs ${need_kb} KiB free in $(dirname "$crash_tmp"), which has ${free_kb} KiB"
      return
    fi
    makedumpfile -R "$crash_tmp/dump" <"$1" >/dev/null 2>"$crash_tmp/err"
    rc=$?
    if [ "$rc" -ne 0 ]; then
      echo "crash_log_error=not read: makedumpfile -R (rebuilding the flattened dump) exited $rc: $(said "$crash_tmp/err")"
      return
    fi
    source_dump=$crash_tmp/dump
  fi
  makedumpfile --dump-dmesg "$source_dump" "$crash_tmp/dmesg" >/dev/null 2>"$crash_tmp/err"
  rc=$?
  if [ "$rc" -ne 0 ] || [ ! -s "$crash_tmp/dmesg" ]; then
    echo "crash_log_error=not read: makedumpfile --dump-dmesg exited $rc: $(said "$crash_tmp/err")"
    return
  fi
  send_log dump-dmesg "$1" "$crash_tmp/dmesg"
}
count=0
for f in $(ls -1t "$DUMP_DIR"/*/vmcore "$DUMP_DIR"/*/vmcore-incomplete "$DUMP_DIR"/*/dump.[0-9]* "$DUMP_DIR"/*/dump-incomplete 2>/dev/null); do
  [ -f "$f" ] || continue
  count=$((count + 1))
  [ "$count" -le "$MAX_DUMPS" ] || break
  size=$(stat -c %s "$f" 2>/dev/null)
  mtime=$(stat -c %Y "$f" 2>/dev/null)
  if [ "$count" -gt 1 ]; then
    echo "dump=$f|$size|$mtime"
    continue
  fi
  tail_bytes=16
  [ "${size:-0}" -ge 16 ] || tail_bytes=${size:-0}
  panic=""
  log=""
  for m in "$(dirname "$f")"/vmcore-dmesg.txt "$(dirname "$f")"/dmesg.[0-9]* "$(dirname "$f")"/dmesg; do
    [ -f "$m" ] || continue
    log=$m
    panic=$(grep -E "$PANIC_LINE|Dazed and confused" "$m" 2>/dev/null | head -n 4 | cut -c 1-200 | hex)
    [ -n "$panic" ] || panic=00
    break
  done
  echo "dump=$f|$size|$mtime|$panic|$(blocks "$f")|$(tail -c "$tail_bytes" "$f" | hex)"
  if [ -n "$log" ]; then
    send_log dmesg-file "$log" "$log"
  else
    dump_dmesg "$f" "${size:-0}"
  fi
done
echo "end=ok"
exit 0
