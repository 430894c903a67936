"""Run untrusted generated code (a candidate program plus its tests) in a limited subprocess.

    result = run_program("def f(): return 1\nassert f() == 1\n", timeout_s=5, memory_mb=512)
    result.passed, result.status            # True, "passed"

Isolation, layer by layer (what a reviewer should know before trusting it):
- a fresh Python (`-I`: no user site, no PYTHON* variables, no cwd on sys.path), an empty
  environment, its own session (the whole process group is killed on timeout), a temporary
  working directory that is deleted afterwards;
- resource limits the child sets on itself before the candidate's first line: CPU seconds, address
  space (memory), file size (no big writes), open files, no core files; a wall-clock timeout kills
  the whole process group (sleeping code uses no CPU);
- no network: where unprivileged user namespaces exist (`unshare -rn`, checked once), the child
  runs in an empty network namespace (no interfaces but a down loopback); elsewhere a guard
  replaces `socket.socket` before the candidate runs, which stops honest mistakes, not an attacker.
This is not a security boundary against a determined adversary (no seccomp, the file system is
readable); it is the HumanEval-style "execution with limits" the papers' pass@1 numbers assume.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from clmkit.errors import InputError

# Prepended to every program: the child limits itself before the candidate's first line runs
# (set here rather than in a preexec_fn, which is unsafe in a parent with threads, as torch's),
# then blocks socket creation and process spawning from Python itself.
_PRELUDE = """\
import resource as _r
_r.setrlimit(_r.RLIMIT_CPU, ({cpu}, {cpu} + 1))
_r.setrlimit(_r.RLIMIT_AS, ({memory}, {memory}))
_r.setrlimit(_r.RLIMIT_FSIZE, ({fsize}, {fsize}))
_r.setrlimit(_r.RLIMIT_NOFILE, (64, 64))
_r.setrlimit(_r.RLIMIT_CORE, (0, 0))
import socket as _s, os as _o, subprocess as _sp
def _no_network(*a, **k):
    raise OSError("network access is disabled in the clmkit sandbox")
_s.socket = _no_network; _s.create_connection = _no_network; _s.socketpair = _no_network
def _no_process(*a, **k):
    raise OSError("starting processes is disabled in the clmkit sandbox")
_sp.Popen = _no_process; _o.system = _no_process; _o.fork = _no_process
del _r, _s, _o, _sp, _no_network, _no_process
"""


@dataclass
class SandboxResult:
    passed: bool
    status: str  # passed | failed (exception / assert) | timeout | memory | syntax-error
    returncode: int | None
    stderr: str  # last lines, for the record
    network_isolation: str  # "netns" (empty network namespace) or "guard" (socket replaced in Python)


@functools.lru_cache(maxsize=1)
def _netns_prefix() -> tuple[str, ...]:
    """`unshare -rn` when this kernel lets an unprivileged user create a network namespace."""
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    try:
        ok = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return (exe, "-rn") if ok else ()


def _status(returncode: int, stderr: str) -> str:
    if returncode == 0:
        return "passed"
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU) or "CPU time" in stderr:
        return "timeout"
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        return "memory"
    if "SyntaxError" in stderr or "IndentationError" in stderr:
        return "syntax-error"
    return "failed"


def run_program(program: str, *, timeout_s: float = 10.0, memory_mb: int = 1024, file_mb: int = 16) -> SandboxResult:
    """Execute `program` (candidate + tests) in the sandbox; passed = exit status 0."""
    if timeout_s <= 0 or memory_mb < 64:
        raise InputError(f"sandbox needs timeout_s > 0 and memory_mb >= 64, got {timeout_s}, {memory_mb}")
    prefix = _netns_prefix()
    isolation = "netns" if prefix else "guard"
    with tempfile.TemporaryDirectory(prefix="clmkit-sandbox-") as work:
        path = os.path.join(work, "candidate.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(_PRELUDE.format(cpu=max(1, math.ceil(timeout_s)), memory=memory_mb << 20, fsize=file_mb << 20))
            f.write(program)
        # RLIMIT_NPROC would count every process of this user (the shared machine's too), so
        # spawning is stopped by the Python guard plus the group kill, not by a limit.
        command = [*prefix, sys.executable, "-I", "-B", path]
        child = subprocess.Popen(
            command, cwd=work, env={"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LC_ALL": "C.UTF-8"},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        try:
            _, err = child.communicate(timeout=timeout_s + 1.0)  # wall clock: sleeping code uses no CPU
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            _, err = child.communicate()
            timed_out = True
    stderr = err.decode("utf-8", "replace")[-2000:]
    status = "timeout" if timed_out else _status(child.returncode, stderr)
    return SandboxResult(status == "passed", status, None if timed_out else child.returncode, stderr, isolation)
