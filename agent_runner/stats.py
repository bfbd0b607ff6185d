"""Per-agent resource usage: CPU, memory and threads of each agent's whole process tree.

Blocking (psutil reads ``/proc``): the runner calls :meth:`TreeSampler.sample` in a worker
thread. ``psutil.Process`` objects are cached per (pid, create time) so ``cpu_percent`` is
measured over the interval since the previous sample (the first reading of a new process
is 0, as psutil documents).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import psutil


@dataclass(frozen=True, slots=True)
class TreeSample:
    agent_id: str
    cpu: float
    memory: int
    threads: int
    descendants: list[psutil.Process]

    def to_json(self) -> dict[str, object]:
        return {
            "agentId": self.agent_id,
            "cpu": round(self.cpu, 1),
            "memory": self.memory,
            "threads": self.threads,
        }


class TreeSampler:
    def __init__(self) -> None:
        self._procs: dict[tuple[int, float], psutil.Process] = {}

    def _cached(self, proc: psutil.Process) -> psutil.Process:
        key = (proc.pid, proc.create_time())
        cached = self._procs.get(key)
        if cached is None:
            cached = self._procs[key] = proc
        return cached

    def sample(
        self, agents: list[tuple[str, int, float]], *, include_root: bool = True
    ) -> list[TreeSample]:
        """Sample ``(agent_id, pid, create_time)`` trees; gone agents are skipped. With
        ``include_root=False`` the root itself is not counted (the runner samples each
        agent's keeper, whose tree holds every process of the agent, but not the keeper's
        own few MB)."""
        seen: set[tuple[int, float]] = set()
        out: list[TreeSample] = []
        for agent_id, pid, create_time in agents:
            try:
                leader = psutil.Process(pid)
                if abs(leader.create_time() - create_time) > 0.01:
                    continue
                descendants = leader.children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            cpu = 0.0
            memory = threads = 0
            for proc in [leader, *descendants] if include_root else descendants:
                with contextlib.suppress(
                    psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied
                ):
                    p = self._cached(proc)
                    seen.add((p.pid, p.create_time()))
                    with p.oneshot():
                        cpu += p.cpu_percent(None)
                        memory += p.memory_info().rss
                        threads += p.num_threads()
            out.append(TreeSample(agent_id, cpu, memory, threads, descendants))
        for key in set(self._procs) - seen:
            del self._procs[key]
        return out
