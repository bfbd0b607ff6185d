"""Bench run ids are unique on the machine: two runs started in the same second (two
``.ci/run``s at once) must not share one, since the id marks a run's processes
(``BENCH_RUN_ID``) and the smoke test counts leftovers by it."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers import ROOT, t

PRINT_ID = "import os; from bench.run import new_run_id; print(os.getpid(), new_run_id())"


def test_two_runs_started_together_get_different_ids() -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PRINT_ID], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    ids = []
    for proc in procs:
        out, _ = proc.communicate(timeout=t(30))
        pid, run_id = out.split()
        assert re.fullmatch(rf"\d{{8}}-\d{{6}}-{pid}-[0-9a-f]{{6}}", run_id), run_id
        ids.append(run_id)
    assert ids[0] != ids[1]
    # Within one process too (the random part).
    two = subprocess.run(
        [sys.executable, "-c", "from bench.run import new_run_id as n; print(n(), n())"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=t(30),
        check=True,
    ).stdout.split()
    assert two[0] != two[1]
