"""``python -m agent_runner``: run the agent runner service (same as ``teamdash runner``)."""

from __future__ import annotations

from agent_runner.service import main
from agent_runner.settings import RunnerSettings
from shared.service import run
from shared.settings import Env


def cli() -> None:
    settings = RunnerSettings.from_env(Env())
    run("runner", settings.common, lambda stop: main(settings, stop))


if __name__ == "__main__":
    cli()
