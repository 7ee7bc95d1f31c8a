"""Ends a `kubectl exec -i` command's input once the client's input has gone quiet.

kwok v0.8.0 copies the client's stdin into the command through a pipe that it never closes
(pkg/utils/exec: the StdinPipe is left open after io.Copy), so `kubectl exec -i postgres-0 --
psql … < restore.sql` would wait for more input forever. This relay passes the input on and
closes it after IDLE_SECONDS without data, which for a piped file is its end.

    python -m opslab.lab.exec_stdin PROGRAM [ARG ...]
"""

from __future__ import annotations

import os
import select
import subprocess
import sys

IDLE_SECONDS = 1.5
CHUNK = 1 << 16


def main(argv: list[str]) -> int:
    child = subprocess.Popen(argv, stdin=subprocess.PIPE)
    try:
        while child.poll() is None:
            readable, _, _ = select.select([0], [], [], IDLE_SECONDS)
            data = os.read(0, CHUNK) if readable else b""
            if not data:
                break
            child.stdin.write(data)
            child.stdin.flush()
    except BrokenPipeError:
        pass  # the program stopped reading: its exit code tells the rest
    finally:
        try:
            child.stdin.close()
        except BrokenPipeError:
            pass
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
