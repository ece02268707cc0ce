"""Running the real ``colombe`` command in a child process, for the CLI and serve tests.

Each child gets this checkout first on its import path and an environment without any
``COLOMBE_*`` variable (nor login variables: the audit actor then comes from the password
database), plus what the test sets.
"""

from __future__ import annotations

import os
import pwd
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI = (sys.executable, "-m", "colombe.cli")
COMMAND_TIMEOUT = 60.0
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_LOGIN_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")


def cli_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("COLOMBE_") and k not in _LOGIN_VARIABLES
    }
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def expected_actor() -> str:
    """The actor the CLI records for the user running the tests."""
    try:
        return f"cli:{pwd.getpwuid(os.getuid()).pw_name}"
    except KeyError:
        return "cli"


def run(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    code: int = 0,
) -> subprocess.CompletedProcess[str]:
    """Run ``colombe ARGS`` to completion and check its exit code."""
    done = subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env=env if env is not None else cli_env(),
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert done.returncode == code, (
        f"colombe {' '.join(args)} exited {done.returncode}, expected {code}\n"
        f"stdout: {done.stdout}\nstderr: {done.stderr}"
    )
    return done


def run_many(
    commands: Sequence[Sequence[str]],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: str = "",
    code: int = 0,
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands side by side (each costs an interpreter start); each gets
    ``stdin`` and must exit with ``code``. Results come in the order of ``commands``."""
    env = env if env is not None else cli_env()
    procs = [
        subprocess.Popen(
            [*CLI, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = []
    try:
        for args, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(input=stdin, timeout=COMMAND_TIMEOUT)
            assert proc.returncode == code, (
                f"colombe {' '.join(args)} exited {proc.returncode}, expected {code}\n"
                f"stdout: {out}\nstderr: {err}"
            )
            results.append(subprocess.CompletedProcess(list(args), proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
    return results


def _one_error_line(args: Sequence[str], stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"colombe {' '.join(args)}: expected one line, got:\n{stderr}"
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


def refused(*args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str = "") -> str:
    """Run a command that must fail: exit 1 and one line on stderr. Returns that line."""
    done = run(*args, cwd=cwd, env=env, stdin=stdin, code=1)
    return _one_error_line(args, done.stderr)


def refused_many(
    commands: Sequence[Sequence[str]],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: str = "",
) -> list[str]:
    """:func:`refused` for independent commands run side by side."""
    done = run_many(commands, cwd=cwd, env=env, stdin=stdin, code=1)
    return [_one_error_line(args, d.stderr) for args, d in zip(commands, done, strict=True)]


class Background:
    """A long-running ``colombe`` child whose output is read by two threads as it comes."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [*CLI, *args],
            cwd=cwd,
            env=env if env is not None else cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream: IO[str]) -> None:
        for line in stream:
            (self.stdout if name == "stdout" else self.stderr).append(line)
            self._lines.put((name, line))
        self._lines.put((name, ""))

    def wait_for(self, stream: str, pattern: str, timeout: float = READY_TIMEOUT) -> re.Match[str]:
        """The first line of ``stream`` matching ``pattern``, within ``timeout`` seconds."""
        regex = re.compile(pattern)
        for line in self.stdout if stream == "stdout" else self.stderr:
            if m := regex.search(line):
                return m
        deadline = time.monotonic() + timeout
        closed: set[str] = set()
        while time.monotonic() < deadline:
            try:
                name, line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line == "":
                closed.add(name)
                if stream in closed:
                    break
                continue
            if name == stream and (m := regex.search(line)):
                return m
        raise AssertionError(
            f"colombe {' '.join(self.args)}: no {pattern!r} on {stream} within {timeout} s "
            f"(exit code {self.proc.poll()})\nstdout: {''.join(self.stdout)}\n"
            f"stderr: {''.join(self.stderr)}"
        )

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and return the exit code, which must come within ``timeout`` seconds."""
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"colombe {' '.join(self.args)} still running {timeout} s after {sig.name}"
            ) from None
        for reader in self._readers:
            reader.join(timeout=STOP_TIMEOUT)
        return code

    def kill(self) -> None:
        """Make sure the child is gone (for ``finally``); a no-op once it exited."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def http(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes to 127.0.0.1:port; return (status, headers, body) of the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status), headers, body
