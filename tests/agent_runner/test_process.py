"""The exec wrapper and the process adapter, without Redis: limits applied, exec failures
reported distinctly (never as a started agent), the whole group killed and verified."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from agent_runner import process as process_module
from agent_runner.errors import SpawnFailed
from agent_runner.process import (
    AgentProcess,
    LaunchSpec,
    kill_orphaned,
    kill_processes,
    live_group_members,
)
from shared.errors import ErrorCode
from tests.helpers import AGENTS_DIR, ROOT, t, wait_for

FORKER = str(AGENTS_DIR / "forker.py")
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


async def test_started_agent_has_limits_and_own_group(tmp_path: Path) -> None:
    script = "ulimit -d; grep Cpus_allowed_list /proc/self/status; echo $HOME"
    spec = LaunchSpec(
        ["sh", "-c", script], {**ENV, "HOME": str(tmp_path)}, tmp_path, memory_mb=64, cpus=[0]
    )
    proc = await AgentProcess.start(spec)
    assert proc.pgid == proc.pid
    out = (await proc.stdout.read()).decode().split("\n")
    assert await proc.wait() == 0
    assert out[0] == str(64 * 1024)  # RLIMIT_DATA in KiB
    assert out[1].split()[-1] == "0"
    assert out[2] == str(tmp_path)


async def test_exec_failure_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SpawnFailed) as info:
        await AgentProcess.start(LaunchSpec(["teamdash-no-such-program"], ENV, tmp_path))
    assert info.value.code == ErrorCode.AGENT_SPAWN_FAILED
    assert info.value.message == (
        "cannot run 'teamdash-no-such-program': No such file or directory"
    )
    not_executable = tmp_path / "agent.sh"
    not_executable.write_text("#!/bin/sh\necho hi\n")
    not_executable.chmod(0o644)
    with pytest.raises(SpawnFailed, match="agent.sh': Permission denied"):
        await AgentProcess.start(LaunchSpec([str(not_executable)], ENV, tmp_path))


async def test_bad_cwd_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SpawnFailed, match="cannot start the agent in"):
        await AgentProcess.start(LaunchSpec(["true"], ENV, tmp_path / "missing"))


async def test_kill_everything_reaches_children_that_left_the_group(tmp_path: Path) -> None:
    code = (
        "import os, subprocess, sys, time\n"
        "a = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "b = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],"
        " start_new_session=True)\n"
        "print(a.pid, b.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    proc = await AgentProcess.start(LaunchSpec([sys.executable, "-c", code], ENV, tmp_path))
    in_group, escaped = map(int, (await proc.stdout.readline()).split())
    assert os.getpgid(escaped) != proc.pgid
    proc.snapshot()
    assert {p.pid for p in proc.descendants} == {in_group, escaped}
    assert await proc.kill_everything() == []
    assert await proc.wait() == -signal.SIGKILL
    for pid in (in_group, escaped):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert live_group_members(proc.pgid) == []


async def test_kill_orphaned_checks_the_create_time(tmp_path: Path) -> None:
    proc = await AgentProcess.start(LaunchSpec(["sleep", "300"], ENV, tmp_path))
    try:
        assert not kill_orphaned(proc.pid, proc.create_time + 100)  # another process: untouched
        assert psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE
        assert kill_orphaned(proc.pid, proc.create_time)
        assert await proc.wait() == -signal.SIGKILL
    finally:
        proc.signal_group(signal.SIGKILL)
        await proc.wait()


def marked(marker: str) -> list[psutil.Process]:
    """Live processes whose environment holds ``TD_TEST_MARK=marker``."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("TD_TEST_MARK") == marker and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


async def test_leader_exit_ends_escaped_children_and_keeps_the_status(tmp_path: Path) -> None:
    """When the agent leader exits by itself, the keeper kills the children that left its
    group (setsid, double fork) and exits with the leader's own code or signal."""
    marker = f"leader-exit-{os.getpid()}"
    env = {**ENV, "TD_TEST_MARK": marker}
    proc = await AgentProcess.start(LaunchSpec([sys.executable, "-u", FORKER, "10"], env, tmp_path))
    line = (await proc.stdout.readline()).decode()
    assert line.startswith("ready ")
    pids = [int(p) for p in line.split()[1:]]
    assert len(pids) == 10 and all(os.getpgid(p) != proc.pgid for p in pids)
    assert len(marked(marker)) == 12  # the sleeps, the agent and its keeper
    proc.stdin.close()  # the agent's loop ends: it exits 0, the sleeps are still there
    assert await proc.wait() == 0
    assert marked(marker) == []
    for code, expected in (
        ("raise SystemExit(3)", 3),
        ("import os; os.kill(os.getpid(), 15)", -15),
    ):
        p = await AgentProcess.start(LaunchSpec([sys.executable, "-c", code], ENV, tmp_path))
        assert await p.wait() == expected


async def test_a_start_cancelled_mid_spawn_leaves_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner stops while an agent is being started: the keeper, the agent and what
    the agent started are all ended (they used to run on until the runner exited)."""
    marker = f"cancelled-start-{os.getpid()}"
    env = {**ENV, "TD_TEST_MARK": marker}
    reading = asyncio.Event()

    async def held_back(fd: int) -> bytes:  # the keeper's report never arrives
        reading.set()
        try:
            await asyncio.Event().wait()
        finally:
            os.close(fd)
        raise AssertionError("unreachable")

    monkeypatch.setattr(process_module, "_read_to_eof", held_back)
    spec = LaunchSpec([sys.executable, "-u", FORKER, "3"], env, tmp_path)
    start = asyncio.create_task(AgentProcess.start(spec))
    try:
        await reading.wait()
        # Three sleeps, the agent and its keeper: the spawn is well under way.
        await wait_for(lambda: len(marked(marker)) == 5, timeout=10, what="the agent's processes")
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start
        await wait_for(lambda: not marked(marker), timeout=5, what="no agent process left")
    finally:
        kill_processes(marked(marker))


async def test_runner_sigkill_takes_every_agent_process_with_it(tmp_path: Path) -> None:
    """A "runner" (a process that started an agent through the keeper) is SIGKILLed: the
    keeper (PDEATHSIG) kills the agent, its group and every process that left it."""
    marker = f"runner-kill-{os.getpid()}"
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from agent_runner.process import AgentProcess, LaunchSpec\n"
        "async def main():\n"
        f"    spec = LaunchSpec([sys.executable, '-u', {FORKER!r}, '30'], {{**{ENV!r},"
        f" 'TD_TEST_MARK': {marker!r}}}, Path({str(tmp_path)!r}))\n"
        "    proc = await AgentProcess.start(spec)\n"
        "    print((await proc.stdout.readline()).decode().strip(), flush=True)\n"
        "    await asyncio.sleep(300)\n"
        "asyncio.run(main())\n"
    )
    runner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, cwd=str(ROOT)
    )
    try:
        assert runner.stdout is not None
        line = (await asyncio.wait_for(runner.stdout.readline(), t(20))).decode()
        assert line.startswith("ready "), line
        assert len(marked(marker)) == 32
        runner.kill()
        await runner.wait()
        await wait_for(lambda: not marked(marker), timeout=5, what="no agent process left")
    finally:
        kill_processes(marked(marker))
        if runner.returncode is None:
            runner.kill()
            await runner.wait()
