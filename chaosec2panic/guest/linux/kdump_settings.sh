# chaosec2panic: arm kdump on this Linux instance, or put back what arming changed.
# ACTION=arm: install what is missing (kexec-tools, kdump-utils, kdump-tools or kdump), reserve
#   crash memory (CRASHKERNEL, only when no crashkernel= is configured or CRASHKERNEL_FORCE=1;
#   on Debian and Ubuntu in a grub.d file read after kdump-tools.cfg, see set_crashkernel),
#   set kernel.unknown_nmi_panic=1 now and in /etc/sysctl.d/99-chaosec2panic.conf, enable and
#   start the kdump service. Nothing already as wanted is touched.
# ACTION=restore: put each setting named in RESTORE back to BEFORE_<setting>. Packages stay. Every
#   name and value is checked first (restorable): one that is not refuses the whole restore.
# Any other ACTION only reports. A system this script does not know is refused (error=) before
# anything is changed. Prints every setting before and after as key=value lines and always exits
# 0: the verdict is in the output, never in the exit code (194 would ask the SSM agent to reboot).
ACTION="${ACTION:-report}"
CRASHKERNEL="${CRASHKERNEL:-1G-4G:192M,4G-64G:256M,64G-:512M}"
CRASHKERNEL_FORCE="${CRASHKERNEL_FORCE:-0}"
RESTORE="${RESTORE:-}"
SYSCTL_FILE=/etc/sysctl.d/99-chaosec2panic.conf
# Debian and Ubuntu: grub-mkconfig reads /etc/default/grub.d/*.cfg after /etc/default/grub, in
# name order, and kdump-tools.cfg appends its crashkernel= to GRUB_CMDLINE_LINUX_DEFAULT (after
# GRUB_CMDLINE_LINUX on the kernel's line). A name after kdump-tools.cfg makes ours the last.
GRUB_DROPIN=/etc/default/grub.d/zz-chaosec2panic-crashkernel.cfg
SETTINGS="packages crashkernel nmi_sysctl_file unknown_nmi_panic use_kdump kdump_enabled kdump_active"
ERR=""

fail() { [ -n "$ERR" ] || ERR=$(printf '%s' "$*" | tr '\n' ' '); return 1; }
val() { [ -r "$1" ] && head -n 1 "$1" 2>/dev/null; }
has() { command -v "$1" >/dev/null 2>&1; }
last() { echo "$1" | grep -v '^[[:space:]]*$' | tail -n 1; }

os_id=""; os_like=""; os_version=""
if [ -r /etc/os-release ]; then
  os_id=$(. /etc/os-release && echo "$ID")
  os_like=$(. /etc/os-release && echo "${ID_LIKE:-}")
  os_version=$(. /etc/os-release && echo "${VERSION_ID:-}")
fi
major=${os_version%%.*}
family=""; packages=""; pm=""; service=""
case " $os_id $os_like " in
  *" amzn "* | *" rhel "* | *" fedora "* | *" centos "*) family=rhel ;;
  *" ubuntu "* | *" debian "*) family=debian ;;
  *" sles "* | *" suse "* | *" opensuse "*) family=suse ;;
esac
case "$family" in
  rhel)
    packages=kexec-tools
    # Fedora 41 and RHEL 10 moved kdumpctl and the kdump service out of kexec-tools.
    case "$os_id" in
      amzn) ;;
      fedora) [ "${major:-0}" -ge 41 ] 2>/dev/null && packages="kexec-tools kdump-utils" ;;
      *) [ "${major:-0}" -ge 10 ] 2>/dev/null && packages="kexec-tools kdump-utils" ;;
    esac
    if has dnf; then pm=dnf; elif has yum; then pm=yum; fi
    service=kdump ;;
  debian) packages=kdump-tools; has apt-get && pm=apt-get; service=kdump-tools ;;
  suse) packages=kdump; has zypper && pm=zypper; service=kdump ;;
esac

installed() {
  found=""
  for p in $packages; do
    if [ "$family" = debian ]; then
      dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q ' installed$' && found="$found $p"
    else
      rpm -q "$p" >/dev/null 2>&1 && found="$found $p"
    fi
  done
  echo "${found# }"
}

#include crashkernel

# The default entry's arguments as grub-mkconfig writes them: GRUB_CMDLINE_LINUX then
# GRUB_CMDLINE_LINUX_DEFAULT, from /etc/default/grub and (Debian, Ubuntu) /etc/default/grub.d/*.cfg
# read after it in name order, as grub-mkconfig reads them (in a subshell: nothing leaks here).
grub_args() {
  (
    GRUB_CMDLINE_LINUX=""; GRUB_CMDLINE_LINUX_DEFAULT=""
    {
      [ -r /etc/default/grub ] && . /etc/default/grub
      if [ "$family" = debian ]; then
        for x in /etc/default/grub.d/*.cfg; do [ -r "$x" ] && . "$x"; done
      fi
    } >/dev/null 2>&1 </dev/null
    echo "$GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT"
  )
}

configured_crashkernel() {
  if has grubby; then
    args=$(grubby --info=DEFAULT 2>/dev/null | grep '^args=' | head -n 1)
    effective_crashkernel "${args#args=}"
  else
    effective_crashkernel "$(grub_args)"
  fi
}

running_crashkernel() {
  effective_crashkernel "$(val /proc/cmdline)"
}

sysctl_file() {
  if [ -f "$SYSCTL_FILE" ]; then
    v=$(grep -E '^[[:space:]]*kernel\.unknown_nmi_panic[[:space:]]*=' "$SYSCTL_FILE" | tail -n 1)
    v=$(echo "${v#*=}" | tr -d ' \t')
    echo "${v:-none}"
  else
    echo absent
  fi
}

use_kdump() {
  [ "$family" = debian ] && [ -r /etc/default/kdump-tools ] || return 0
  grep -E '^USE_KDUMP=' /etc/default/kdump-tools | tail -n 1 | cut -d = -f 2 | tr -d '"'
}

service_state() {
  [ -n "$service" ] && has systemctl || return 0
  s=$(systemctl "$1" "$service" 2>/dev/null | head -n 1)
  echo "${s:-absent}"
}

# The value of setting $1 now, one line.
setting() {
  case "$1" in
    packages) installed ;;
    crashkernel) configured_crashkernel ;;
    nmi_sysctl_file) sysctl_file ;;
    unknown_nmi_panic) val /proc/sys/kernel/unknown_nmi_panic ;;
    use_kdump) use_kdump ;;
    kdump_enabled) service_state is-enabled ;;
    kdump_active) service_state is-active ;;
  esac | head -n 1
}

# Every setting now, one "name=value" line each; recorded NAME SNAPSHOT reads one back.
snapshot() {
  for s in $SETTINGS; do printf '%s=%s\n' "$s" "$(setting "$s")"; done
}
recorded() { printf '%s\n' "$2" | sed -n "s/^$1=//p"; }

# Whether $1 is a whole number of at most 10 digits, as the kernel's sysctls take.
whole_number() {
  digits=${1#-}
  case "$digits" in "" | *[!0-9]*) return 1 ;; esac
  [ ${#digits} -le 10 ]
}

# Whether $2 is a value setting $1 can be put back to: one kdump_settings reports for it, and
# nothing a sourced grub file, a sed program or a sysctl line could take for more than a value
# (chaosec2panic.guest.parsers.RESTORABLE_VALUES holds the same formats). Empty: there was none.
restorable() {
  case "$1" in
    crashkernel) [ -z "$2" ] || crashkernel_value "$2" ;;
    unknown_nmi_panic) [ -z "$2" ] || whole_number "$2" ;;
    nmi_sysctl_file) [ "$2" = absent ] || [ "$2" = none ] || whole_number "$2" ;;
    use_kdump) case "$2" in *[!0-9A-Za-z]*) return 1 ;; esac && [ ${#2} -le 16 ] ;;
    kdump_active | kdump_enabled) case "$2" in *[!a-z-]*) return 1 ;; esac && [ ${#2} -le 32 ] ;;
    *) return 1 ;;
  esac
}

# v= what BEFORE_$1 holds: each setting's own variable, so that no name is ever evaluated.
before_value() {
  case "$1" in
    crashkernel) v=${BEFORE_crashkernel-} ;;
    nmi_sysctl_file) v=${BEFORE_nmi_sysctl_file-} ;;
    unknown_nmi_panic) v=${BEFORE_unknown_nmi_panic-} ;;
    use_kdump) v=${BEFORE_use_kdump-} ;;
    kdump_enabled) v=${BEFORE_kdump_enabled-} ;;
    kdump_active) v=${BEFORE_kdump_active-} ;;
    *) v="" ;;
  esac
}

# Make $1 the crashkernel= of the next boot ("" for none). grubby edits every boot entry. Debian
# and Ubuntu: $1 goes in GRUB_DROPIN, written only when the files without it would not give $1
# (kdump-tools.cfg may), so removing it undoes it; /etc/default/grub and kdump-tools.cfg (a
# package's conffile) are left alone. Elsewhere: GRUB_CMDLINE_LINUX in /etc/default/grub. Then the
# boot menu is rebuilt, and $1 is checked to be what it now gives the kernel: when a crashkernel=
# after it wins, the files are put back and it fails.
set_crashkernel() {
  if [ -n "$1" ] && ! crashkernel_value "$1"; then
    fail "crashkernel=$1 is not a crashkernel= value: not written"
    return 1
  fi
  if has grubby; then
    if [ -n "$1" ]; then
      out=$(grubby --update-kernel=ALL --args="crashkernel=$1" 2>&1) || fail "grubby: $(last "$out")"
    else
      out=$(grubby --update-kernel=ALL --remove-args=crashkernel 2>&1) || fail "grubby: $(last "$out")"
    fi
    return
  fi
  f=/etc/default/grub
  [ -w "$f" ] || { fail "no grubby and no writable /etc/default/grub: cannot set crashkernel"; return; }
  grub_was=$(cat "$f"); dropin_was=$(cat "$GRUB_DROPIN" 2>/dev/null)
  if [ "$family" = debian ] && [ -n "$1" ]; then
    rm -f "$GRUB_DROPIN" || { fail "cannot remove $GRUB_DROPIN"; return; }
    if [ "$(configured_crashkernel)" != "$1" ]; then
      {
        mkdir -p "${GRUB_DROPIN%/*}" && {
          echo "# Written by chaosec2panic arm_kdump: the crash kernel reservation it set. Read after"
          echo "# kdump-tools.cfg, so this crashkernel= is the last on the kernel's command line, the"
          echo "# one the kernel uses. restore_kdump_settings removes it (or: remove it, run update-grub)."
          echo "GRUB_CMDLINE_LINUX_DEFAULT=\"\$GRUB_CMDLINE_LINUX_DEFAULT crashkernel=$1\""
        } >"$GRUB_DROPIN"
      } || { fail "cannot write $GRUB_DROPIN"; return; }
    fi
  else
    [ "$family" != debian ] || rm -f "$GRUB_DROPIN" || { fail "cannot remove $GRUB_DROPIN"; return; }
    grep -q '^GRUB_CMDLINE_LINUX=' "$f" || echo 'GRUB_CMDLINE_LINUX=""' >>"$f"
    sed -i -e '/^GRUB_CMDLINE_LINUX=/ s/[[:space:]]*crashkernel=[^[:space:]"]*//g' "$f" || fail "cannot edit $f"
    if [ -n "$1" ]; then
      sed -i -e "/^GRUB_CMDLINE_LINUX=/ s|\"\$| crashkernel=$1\"|" -e '/^GRUB_CMDLINE_LINUX=/ s/=" /="/' "$f"
    fi
  fi
  boot_menu || return
  now=$(configured_crashkernel)
  if [ -n "$1" ] && [ "$now" != "$1" ]; then
    from=$(grep -l 'crashkernel=' "$f" /etc/default/grub.d/*.cfg 2>/dev/null | tr '\n' ' ')
    fail "crashkernel=$1 was written but the next boot would use crashkernel=${now:-(none)}" \
      "(crashkernel= is set in: ${from% }): the kernel takes the last one"
    # What was written is not the last: put the files back as they were.
    printf '%s\n' "$grub_was" >"$f"
    if [ -n "$dropin_was" ]; then printf '%s\n' "$dropin_was" >"$GRUB_DROPIN"; else rm -f "$GRUB_DROPIN"; fi
    boot_menu
    return 1
  fi
}

# Rebuild the boot menu from /etc/default/grub (and grub.d).
boot_menu() {
  if has update-grub; then
    out=$(update-grub 2>&1) || fail "update-grub: $(last "$out")"
  elif has grub2-mkconfig; then
    out=$(grub2-mkconfig -o /boot/grub2/grub.cfg 2>&1) || fail "grub2-mkconfig: $(last "$out")"
  elif has grub-mkconfig; then
    out=$(grub-mkconfig -o /boot/grub/grub.cfg 2>&1) || fail "grub-mkconfig: $(last "$out")"
  else
    fail "no update-grub or grub2-mkconfig: crashkernel is in /etc/default/grub but not in the boot menu"
  fi
}

set_sysctl_file() {
  f="$SYSCTL_FILE"
  if ! restorable nmi_sysctl_file "$1"; then
    fail "kernel.unknown_nmi_panic = $1 is not a value: not written"
    return 1
  fi
  if [ "$1" = absent ]; then
    rm -f "$f" || fail "cannot remove $SYSCTL_FILE"
  elif [ "$1" = none ]; then
    sed -i '/^[[:space:]]*kernel\.unknown_nmi_panic[[:space:]]*=/d' "$f" || fail "cannot edit $SYSCTL_FILE"
  elif [ -f "$f" ] && grep -q '^[[:space:]]*kernel\.unknown_nmi_panic[[:space:]]*=' "$f"; then
    sed -i "s/^[[:space:]]*kernel\.unknown_nmi_panic[[:space:]]*=.*/kernel.unknown_nmi_panic = $1/" "$f" ||
      fail "cannot edit $SYSCTL_FILE"
  else
    { mkdir -p "${f%/*}" && echo "kernel.unknown_nmi_panic = $1" >>"$f"; } || fail "cannot write $SYSCTL_FILE"
  fi
}

set_use_kdump() {
  if [ -z "$1" ] || ! restorable use_kdump "$1"; then
    fail "USE_KDUMP=$1 is not a value: not written"
    return 1
  fi
  sed -i "s/^USE_KDUMP=.*/USE_KDUMP=$1/" /etc/default/kdump-tools || fail "cannot set USE_KDUMP=$1"
}

service_do() {
  out=$(systemctl "$1" "$service" 2>&1) || fail "systemctl $1 $service: $(last "$out")"
}

arm() {
  [ -n "$family" ] || {
    fail "unsupported system ${os_id:-without /etc/os-release}: arm kdump by hand" \
      "(known: Amazon Linux, RHEL, Fedora, Ubuntu, Debian, SUSE); nothing was changed"
    return
  }
  crashkernel_value "$CRASHKERNEL" || {
    fail "CRASHKERNEL $CRASHKERNEL is not a crashkernel= value (size[@offset], size,high or" \
      "ranges start-[end]:size,...); nothing was changed"
    return
  }
  missing=""
  for p in $packages; do
    case " $(recorded packages "$before") " in *" $p "*) ;; *) missing="$missing $p" ;; esac
  done
  missing=${missing# }
  if [ -n "$missing" ]; then
    [ -n "$pm" ] || { fail "no package manager (dnf, yum, apt-get, zypper) to install $missing; nothing was changed"; return; }
    case "$pm" in
      dnf | yum) out=$("$pm" -y install $missing 2>&1) ;;
      apt-get)
        out=$(DEBIAN_FRONTEND=noninteractive apt-get -y install $missing 2>&1) ||
          out=$(apt-get update 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get -y install $missing 2>&1) ;;
      zypper) out=$(zypper --non-interactive install $missing 2>&1) ;;
    esac || { fail "$pm could not install $missing: $(last "$out")"; return; }
  fi
  has systemctl || { fail "no systemctl: cannot enable the $service service"; return; }
  if [ "$family" = debian ] && [ "$(use_kdump)" = 0 ]; then
    set_use_kdump 1
  fi
  # Keep the reservation there was before (a package installed above may bring its own, as
  # kdump-tools does in grub.d), unless there was none or CRASHKERNEL is forced.
  want=$(recorded crashkernel "$before")
  if [ -z "$want" ] || [ "$CRASHKERNEL_FORCE" = 1 ]; then want=$CRASHKERNEL; fi
  [ "$(configured_crashkernel)" = "$want" ] || set_crashkernel "$want" || return
  [ "$(sysctl_file)" = 1 ] || set_sysctl_file 1 || return
  if [ "$(recorded unknown_nmi_panic "$before")" != 1 ]; then
    out=$(sysctl -w kernel.unknown_nmi_panic=1 2>&1) || { fail "sysctl: $(last "$out")"; return; }
  fi
  [ "$(service_state is-enabled)" = enabled ] || service_do enable || return
  # Without crash memory in the running kernel the service cannot load the crash kernel: the
  # reboot that reserves it starts the service. Debian's kdump-tools.service is a oneshot that
  # stays active after a boot with USE_KDUMP=0 that loaded nothing: an active service with no
  # crash kernel loaded is restarted.
  if [ "$(val /sys/kernel/kexec_crash_size)" -gt 0 ] 2>/dev/null && [ "$(val /sys/kernel/kexec_crash_loaded)" != 1 ]; then
    if [ "$(service_state is-active)" = active ]; then service_do restart; else service_do start; fi
  fi
}

# kdump-tools' service is a oneshot that stays active: putting USE_KDUMP back to 0 does not take
# out the crash kernel arm loaded. Unload it, as kdump-config does when the service stops.
unload_unused() {
  case "$v" in 1 | true | yes) return 0 ;; esac
  [ "$(val /sys/kernel/kexec_crash_loaded)" = 1 ] && has kdump-config || return 0
  out=$(kdump-config unload 2>&1) || fail "kdump-config unload: $(last "$out")"
}

restore() {
  names=""
  set -f # RESTORE is split into words, never expanded as file names
  for s in $RESTORE; do names="$names $s"; done
  set +f
  for s in $names; do
    case " $SETTINGS " in
      *" $s "*) ;;
      *) fail "unknown setting $s (known: $SETTINGS); nothing was changed"; return ;;
    esac
    before_value "$s"
    [ "$s" = packages ] || restorable "$s" "$v" ||
      { fail "BEFORE_$s is not a value $s can be put back to, got '$v'; nothing was changed"; return; }
  done
  for s in $names; do
    before_value "$s"
    case "$s" in
      packages) ;;
      crashkernel) [ "$(configured_crashkernel)" = "$v" ] || set_crashkernel "$v" ;;
      nmi_sysctl_file) [ "$(sysctl_file)" = "$v" ] || set_sysctl_file "$v" ;;
      unknown_nmi_panic)
        if [ -n "$v" ] && [ "$(val /proc/sys/kernel/unknown_nmi_panic)" != "$v" ]; then
          out=$(sysctl -w "kernel.unknown_nmi_panic=$v" 2>&1) || fail "sysctl: $(last "$out")"
        fi ;;
      use_kdump) [ -z "$v" ] || [ "$(use_kdump)" = "$v" ] || { set_use_kdump "$v" && unload_unused; } ;;
      kdump_active) [ "$v" = active ] || [ "$(service_state is-active)" != active ] || service_do stop ;;
      kdump_enabled) [ "$v" = enabled ] || [ "$(service_state is-enabled)" != enabled ] || service_do disable ;;
    esac
  done
}

before=$(snapshot)
case "$ACTION" in
  arm) arm ;;
  restore) restore ;;
  report) ;;
  *) fail "unknown ACTION $ACTION (arm, restore or report)" ;;
esac
after=$(snapshot)

echo "schema=kdump_settings/1"
echo "action=$ACTION"
echo "boot_id=$(val /proc/sys/kernel/random/boot_id)"
echo "uptime=$(val /proc/uptime | cut -d ' ' -f 1)"
echo "os_id=$os_id"
echo "package_manager=$pm"
echo "kdump_service_name=$service"
echo "running_crashkernel=$(running_crashkernel)"
echo "crash_size=$(val /sys/kernel/kexec_crash_size)"
for s in $SETTINGS; do
  printf '%s_before=%s\n' "$s" "$(recorded "$s" "$before")"
  printf '%s_after=%s\n' "$s" "$(recorded "$s" "$after")"
done
echo "error=$ERR"
echo "end=ok"
exit 0
