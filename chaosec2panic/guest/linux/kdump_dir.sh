# chaosec2panic: where kdump writes its dumps: the directory its configuration names
# (kdump.conf path, kdump-tools KDUMP_COREDIR, SUSE KDUMP_SAVEDIR), else /var/crash, in
# $dump_dir. Included by the scripts that need it (see chaosec2panic.guest.script).
dump_dir=/var/crash
for conf in /etc/kdump.conf /etc/default/kdump-tools /etc/sysconfig/kdump; do
  [ -r "$conf" ] || continue
  line=$(grep -E '^[[:space:]]*(path[[:space:]]|KDUMP_COREDIR=|KDUMP_SAVEDIR=)' "$conf" | tail -n 1)
  case "$line" in
    *KDUMP_SAVEDIR=*) v=${line#*=}; v=$(echo "$v" | tr -d '"'); dump_dir=${v#file://} ;;
    *KDUMP_COREDIR=*) v=${line#*=}; dump_dir=$(echo "$v" | tr -d '"') ;;
    *path*) dump_dir=$(echo "$line" | tr -s ' \t' ' ' | sed 's/^ *//' | cut -d ' ' -f 2) ;;
  esac
done
