# chaosec2panic: effective_crashkernel WORDS... prints the crashkernel= value the kernel uses
# from a command line: the last one without a ,high, ,low or ,cma suffix, else the last ,high
# one (kernel/crash_reserve.c, get_last_crashkernel). Included by the scripts that need it.
effective_crashkernel() {
  plain=""; high=""
  for word in $(echo "$*" | tr -d "\"'"); do
    case "$word" in
      crashkernel=*,low | crashkernel=*,cma) ;;
      crashkernel=*,high) high=${word#crashkernel=} ;;
      crashkernel=*) plain=${word#crashkernel=} ;;
    esac
  done
  echo "${plain:-$high}"
}
