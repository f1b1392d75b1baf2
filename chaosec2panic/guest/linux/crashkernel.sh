# chaosec2panic: effective_crashkernel WORDS... prints the crashkernel= value the kernel uses
# from a command line: the last one without a ,high, ,low or ,cma suffix, else the last ,high
# one (kernel/crash_reserve.c, get_last_crashkernel). Included by the scripts that need it.
effective_crashkernel() {
  plain=""; high=""
  set -f # the words are split, never expanded as file names
  for word in $(echo "$*" | tr -d "\"'"); do
    case "$word" in
      crashkernel=*,low | crashkernel=*,cma) ;;
      crashkernel=*,high) high=${word#crashkernel=} ;;
      crashkernel=*) plain=${word#crashkernel=} ;;
    esac
  done
  set +f
  echo "${plain:-$high}"
}

# crashkernel_value VALUE: whether VALUE is a crashkernel= value as the kernel parses it
# (kernel/crash_reserve.c, sizes as memparse reads them): size[@offset], size,high|low|cma, or
# ranges start-[end]:size[,...][@offset]; or RHEL 8's auto. The grammar of
# chaosec2panic.guest.parsers.CRASHKERNEL: nothing else goes into a grub file or a sed program.
crashkernel_value() {
  case "$1" in "" | *[!0-9A-Za-z,:@-]*) return 1 ;; esac
  ck_size='(0[xX][0-9a-fA-F]+|[0-9]+)[KMGTPEkmgtpe]?'
  ck_range="$ck_size-($ck_size)?:$ck_size"
  printf '%s\n' "$1" |
    LC_ALL=C grep -Eq "^(auto|$ck_size(@$ck_size|,(high|low|cma))?|$ck_range(,$ck_range)*(@$ck_size)?)\$"
}
