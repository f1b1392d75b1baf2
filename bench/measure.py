"""Run a command as a child and write its peak RSS and CPU time as JSON: the bench's meter.

    python bench/measure.py OUT.json COMMAND [ARG ...]

A small process between the bench and the process it measures: a child forked from the
bench itself (which holds the lab and moto, a few hundred MiB) would carry the bench's
resident size into its own peak until it execs; forked from this one, it carries a few MiB.
Exits with the command's exit code.
"""

import json
import resource
import subprocess
import sys
import time


def main() -> int:
    out, command = sys.argv[1], sys.argv[2:]
    started = time.time()
    code = subprocess.call(command)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out, "w") as f:
        json.dump(
            {
                "returncode": code,
                "max_rss_kib": usage.ru_maxrss,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "wall_s": time.time() - started,
            },
            f,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
