"""The sandbox runs candidates with time, memory, file-size, process and network limits."""

from __future__ import annotations

import pytest

from clmkit.errors import InputError
from clmkit.prompting.sandbox import run_program


def test_pass_and_fail():
    assert run_program("def f(x):\n    return x + 1\nassert f(1) == 2\n").passed
    failed = run_program("assert 1 + 1 == 3\n")
    assert not failed.passed and failed.status == "failed" and "AssertionError" in failed.stderr
    assert run_program("def f(:\n").status == "syntax-error"


def test_time_limit_busy_and_sleeping():
    assert run_program("while True:\n    pass\n", timeout_s=1).status == "timeout"
    assert run_program("import time\ntime.sleep(60)\n", timeout_s=1).status == "timeout"


def test_memory_limit():
    result = run_program("x = bytearray(2 * 1024 ** 3)\n", memory_mb=256)
    assert not result.passed and result.status == "memory"


def test_no_network():
    result = run_program("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n")
    assert not result.passed and "disabled" in result.stderr
    # below the Python guard: the raw C module; in a network namespace there is no route at all
    raw = run_program("import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('1.1.1.1', 80))\n")
    assert not raw.passed
    if raw.network_isolation == "netns":
        assert "unreachable" in raw.stderr.lower()


def test_no_processes_no_big_files_and_a_private_temp_dir():
    assert not run_program("import subprocess\nsubprocess.run(['true'])\n").passed
    assert not run_program("import os\nos.system('true')\n").passed
    assert not run_program("open('big', 'wb').write(b'x' * (64 << 20))\n", file_mb=16).passed
    assert run_program("import os\nassert os.path.basename(os.getcwd()).startswith('clmkit-sandbox-')\n"
                       "assert not os.environ.get('CLMKIT_DATA')\n").passed


def test_bad_limits():
    with pytest.raises(InputError):
        run_program("pass", timeout_s=0)
    with pytest.raises(InputError):
        run_program("pass", memory_mb=1)
