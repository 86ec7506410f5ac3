"""Run the ``gateway`` command line in this process, then print this process's peak RSS
(VmHWM, bytes) on the last line of standard error: the memory of one ``gateway ingest``,
not counting the benchmark process it was started from.

    python3 -m bench.peak --config PATH ingest FILE
"""

from __future__ import annotations

import sys

from gateway.cli import main

if __name__ == "__main__":
    status = main(sys.argv[1:])
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    print(f"peak-rss {hwm}", file=sys.stderr)
    sys.exit(status)
