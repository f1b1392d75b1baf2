# chaosec2panic: whether the system clock is synchronised (NTP, chrony, Amazon Time Sync), in
# $clock_synced: yes, no, or empty where nothing says (no timedatectl, no bus to timedated).
# Included by the scripts that date a boot by the clock (see chaosec2panic.guest.script).
clock_synced=""
if command -v timedatectl >/dev/null 2>&1; then
  # systemd 239+ has "show"; 219 (Amazon Linux 2) says "NTP synchronized: yes" in its status.
  case "$(timedatectl show -p NTPSynchronized 2>/dev/null)" in
    NTPSynchronized=yes) clock_synced=yes ;;
    NTPSynchronized=no) clock_synced=no ;;
    *) case "$(timedatectl status 2>/dev/null)" in
         *"synchronized: yes"*) clock_synced=yes ;;
         *"synchronized: no"*) clock_synced=no ;;
       esac ;;
  esac
fi
