"""A container's monitor, as conmon is for CRI-O: it runs the container's program, writes its
output to the container log in the CRI format that `kubectl logs` reads, and exits with the
program's exit code.

    python -m opslab.lab.conmon LOG_FILE -- PROGRAM [ARG ...]

It imports nothing but the standard library: one runs beside every container.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import threading


def _copy(stream, name: str, log, lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
        line = raw.rstrip(b"\n")
        with lock:
            log.write(f"{stamp} {name} F ".encode() + line + b"\n")
            log.flush()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    log_path, program = argv[0], argv[2:]
    with open(log_path, "ab") as log:
        child = subprocess.Popen(program, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # The stop signal reaches the whole process group; the monitor outlives the program to
        # write its last lines and report its code.
        signal.signal(signal.SIGTERM, lambda *_: None)
        signal.signal(signal.SIGINT, lambda *_: None)
        lock = threading.Lock()
        copiers = [threading.Thread(target=_copy, args=(s, n, log, lock)) for s, n in
                   ((child.stdout, "stdout"), (child.stderr, "stderr"))]
        for copier in copiers:
            copier.start()
        code = child.wait()
        for copier in copiers:
            copier.join(timeout=5)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
