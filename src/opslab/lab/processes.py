"""The lab's processes: start detached, find again by pid file, stop, and nothing else.

A pid file holds the pid and the process's start time, so a recycled pid is never mistaken
for a lab process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Command:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    netns: str | None = None  # run inside this network namespace


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 is the start time; the command name (field 2) may contain spaces, so split after it.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


class Supervisor:
    def __init__(self, run_dir: Path, log_dir: Path, *, isolated: bool = False):
        """`isolated`: processes get only their command's environment, and logs hold only their
        own output (a container's log), not our start lines."""
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.isolated = isolated

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        """The live pid of `name`, or None when it is not running."""
        try:
            pid_text, started = self._pid_file(name).read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        return pid if _start_time(pid) == started else None

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.run_dir.glob("*.pid")) if self.run_dir.exists() else []

    def start(self, command: Command) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = command.argv
        if command.netns:
            argv = ["ip", "netns", "exec", command.netns, *argv]
        with open(self.log_path(command.name), "ab") as log:
            if not self.isolated:
                log.write(f"\n--- started {time.strftime('%Y-%m-%dT%H:%M:%S')}: {' '.join(argv)}\n".encode())
                log.flush()
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=command.env if self.isolated else {**os.environ, **command.env},
                start_new_session=True, close_fds=True,
            )
        self._pid_file(command.name).write_text(f"{process.pid} {_start_time(process.pid)}\n")
        return process.pid

    def exit_code(self, name: str) -> int | None:
        """The exit code of a process that has ended (its pid file is then removed); None while
        it runs or when it was never started. A process another Python started reports 255
        once gone: its code is not ours to read."""
        try:
            pid = int(self._pid_file(name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
            code = None if reaped != pid else (
                os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
        except ChildProcessError:
            code = None if self.pid(name) is not None else 255
        if code is not None:
            self._pid_file(name).unlink(missing_ok=True)
        return code

    def exited_early(self, name: str) -> bool:
        """Reaps a child that already died, so `pid` reports it gone."""
        pid = self.pid(name)
        if pid is None:
            return True
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return reaped == pid

    def stop(self, name: str, grace: float = 10.0) -> None:
        pid = self.pid(name)
        if pid is not None:
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self._alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._alive(pid):
                _signal_group(pid, signal.SIGKILL)
                while self._alive(pid):
                    time.sleep(0.05)
        self._pid_file(name).unlink(missing_ok=True)

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return _start_time(pid) is not None


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
