"""Terminal tools under a pseudo-terminal (model option ``pty``): the keeper gives the agent
a terminal and relays it, the line driver renders what a terminal shows, detects the tool's
prompt as the end of a turn and its questions as input requests, and types commands. The
tool is ``tests/agents/tui.py``, which refuses to run without a terminal."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from agent_runner.drivers import LineTool
from agent_runner.drivers.terminal import render_line
from agent_runner.process import PTY_COLUMNS, PTY_ROWS, AgentProcess, LaunchSpec
from shared.bus import EventBus
from shared.keys import agent_topic
from tests.agent_runner.conftest import Gateway, outputs, statuses, wait_events
from tests.helpers import AGENTS_DIR, t

TUI = str(AGENTS_DIR / "tui.py")


def turn_ends(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in evs if e["type"] == "agent:output" and _kind(e) == "turn_end"]


def _kind(e: dict[str, Any]) -> str | None:
    event = e["payload"].get("event")
    return event["kind"] if event else None


def transcript(evs: list[dict[str, Any]]) -> str:
    return "".join(o["data"] for o in outputs(evs, "stdout"))


# -- the cores ------------------------------------------------------------------------------


def test_render_line_is_what_a_terminal_shows() -> None:
    assert render_line("\x1b[?2004h\x1b[1;32m> \x1b[0m") == "> "
    assert render_line("\x1b[36mecho:\x1b[0m hi\r\n") == "echo: hi"
    assert render_line("\r\x1b[36mworking |\x1b[0m\x1b[K\r\x1b[Kspun\r\n") == "spun"
    assert render_line("50%\r100%\n") == "100%"
    assert render_line("long line\rshort") == "shortline"  # overwritten, not erased
    assert render_line("abc\bd \b\b") == "abd "
    assert render_line("\x1b]0;title\x07a\x1b(Bb\x1b]8;;http://x\x1b\\c\x07") == "abc"
    assert render_line("a\tb") == "a       b"
    assert render_line("x\x1b[5Gy\x1b[2Dz") == "x  zy"
    assert render_line("keep\x1b[2K\rnew") == "new"
    assert render_line("abcdef\x1b[3D\x1b[1K") == "    ef"


def test_line_tool_on_a_terminal() -> None:
    import re

    tool = LineTool(
        completion=re.compile("^> $"), prompt=re.compile(r"\(Y\)es/\(N\)o"), terminal=True
    )
    assert not tool.passthrough and tool.detects_turns
    assert tool.frame("fix it") == b"fix it\r"
    # The prompt comes back without a newline: the end of the turn, once.
    end = tool.read_partial("\x1b[1;32m> \x1b[0m")
    assert end.turn_end is not None and [s.text for s in end.shown] == [""]
    assert not tool.read_partial("\r\x1b[K\x1b[1;32m> \x1b[0m").shown  # redrawn: same prompt
    # The line goes on with the command typed: shown whole, not matched again.
    [typed] = tool.read("\x1b[1;32m> \x1b[0mfix it\r\n").shown
    assert (typed.text, typed.event) == ("> fix it\n", None)
    [line] = tool.read("\x1b[36mecho:\x1b[0m fix it\r\n").shown
    assert line.text == "echo: fix it\n" and line.event is None
    # A question: an input_request showing it; the reply is not a turn of its own.
    ask = tool.read_partial("\x1b[1mApply? (Y)es/(N)o [Yes]:\x1b[0m ")
    [shown] = ask.shown
    assert shown.text == "Apply? (Y)es/(N)o [Yes]: \n"
    assert shown.event is not None and shown.event.kind == "input_request"
    assert ask.turn_end is None and tool.awaiting_reply
    assert tool.frame("n") == b"n\r" and not tool.awaiting_reply
    [rest] = tool.read("\x1b[1mApply? (Y)es/(N)o [Yes]:\x1b[0m n\r\n").shown
    assert rest.text == "n\n"
    # A blank line stays a line.
    assert [s.text for s in tool.read("\r\n").shown] == ["\n"]


# -- the keeper's terminal ------------------------------------------------------------------


async def test_the_keeper_gives_the_agent_a_terminal_and_relays_it(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "print(os.isatty(0), os.isatty(1), os.isatty(2), os.get_terminal_size(0), flush=True)\n"
        "print('typed', repr(sys.stdin.readline()), flush=True)\n"
        "print('eof', repr(sys.stdin.readline()), flush=True)\n"
        "sys.stderr.write('to stderr\\n')\n"
        "sys.exit(3)\n"
    )
    process = await AgentProcess.start(
        LaunchSpec(
            argv=[sys.executable, "-c", script],
            env={"PATH": "/usr/bin:/bin"},
            cwd=tmp_path,
            pty=True,
        )
    )
    process.stdin.write(b"hello\r")  # Enter, as a terminal sends it
    await process.stdin.drain()
    process.stdin.close()  # end of input: the terminal's ^D
    out = await asyncio.wait_for(process.stdout.read(), t(10))
    err = await asyncio.wait_for(process.stderr.read(), t(10))
    assert await asyncio.wait_for(process.wait(), t(10)) == 3  # its exit status, kept
    size = f"os.terminal_size(columns={PTY_COLUMNS}, lines={PTY_ROWS})"
    # stdin and stdout are the terminal (no echo of what was typed); stderr stays a pipe.
    assert out.decode().splitlines() == [f"True True False {size}", "typed 'hello\\n'", "eof ''"]
    assert err == b"to stderr\n"


async def test_a_terminal_agent_killed_by_a_signal_is_reported_so(tmp_path: Path) -> None:
    script = "import sys, time\nprint('up', flush=True)\ntime.sleep(60)\n"
    process = await AgentProcess.start(
        LaunchSpec(argv=[sys.executable, "-c", script], env={}, cwd=tmp_path, pty=True)
    )
    assert await asyncio.wait_for(process.stdout.readline(), t(10)) == b"up\r\n"
    assert process.signal_group(signal.SIGTERM)
    # The keeper, relaying, notices the exit at once and exits the same way.
    assert await asyncio.wait_for(process.wait(), t(10)) == -signal.SIGTERM
    assert await asyncio.wait_for(process.stdout.read(), t(10)) == b""
    assert await process.kill_everything() == []


# -- through a runner -----------------------------------------------------------------------


async def test_a_tui_runs_under_a_terminal_turn_by_turn(
    start_runner, gateway: Gateway, bus: EventBus
) -> None:
    await start_runner()
    agent_id, reply = await gateway.create("tui", workspace="tui")
    assert reply.success, reply
    topic = agent_topic(agent_id)
    # Ready: its first prompt.
    evs = await wait_events(bus, topic, lambda e: len(turn_ends(e)) == 1, what="the prompt")
    assert transcript(evs) == "tui fixture ready\n"
    request_id = await gateway.send(
        "command", agent_id, {"agentId": agent_id, "command": "hello", "timeout": 10_000},
        wait=False,
    )  # fmt: skip
    assert (await gateway.reply(request_id)).success
    evs = await wait_events(bus, topic, lambda e: len(turn_ends(e)) == 2, what="the turn's end")
    assert transcript(evs) == "tui fixture ready\n> hello\necho: hello\n"
    assert turn_ends(evs)[-1]["metadata"]["correlationId"] == request_id
    # Readable text in data; what the tool wrote, escape codes and all, in raw.
    [echo] = [o for o in outputs(evs) if o["data"] == "echo: hello\n"]
    assert echo["raw"] == "\x1b[36mecho:\x1b[0m hello\r\n" and "event" not in echo
    assert not any("\x1b" in o["data"] or "\r" in o["data"] for o in outputs(evs))

    # A redrawn progress line, and the terminal's size.
    assert (await gateway.command(agent_id, "spin")).success
    assert (await gateway.command(agent_id, "tty")).success
    evs = await wait_events(bus, topic, lambda e: len(turn_ends(e)) == 4, what="two turns")
    lines = transcript(evs).splitlines()
    assert lines[3:6] == ["> spin", "spun", "> tty"]
    assert lines[6].startswith("tty: /dev/pts/") and lines[6].endswith(" 200x50")

    # A question is an input request; the reply typed is part of the same turn.
    ask_id = await gateway.send(
        "command", agent_id, {"agentId": agent_id, "command": "ask"}, wait=False
    )
    assert (await gateway.reply(ask_id)).success
    evs = await wait_events(
        bus, topic, lambda e: any(_kind(x) == "input_request" for x in e), what="the question"
    )
    [ask] = [o for o in outputs(evs) if o.get("event", {}).get("kind") == "input_request"]
    assert ask["event"]["prompt"] == "Apply the change? (Y)es/(N)o [Yes]:"
    assert ask["data"] == "Apply the change? (Y)es/(N)o [Yes]: \n"
    answer = await gateway.command(agent_id, "n", timeout=5_000)
    assert answer.success and answer.result == {"agentId": agent_id, "timeoutEnforced": False}
    evs = await wait_events(bus, topic, lambda e: len(turn_ends(e)) == 5, what="the answer")
    assert transcript(evs).splitlines()[-2:] == ["n", "skipped"]
    assert turn_ends(evs)[-1]["metadata"]["correlationId"] == ask_id

    assert (await gateway.command(agent_id, "exit")).success
    evs = await wait_events(bus, topic, lambda e: "stopped" in statuses(e), what="its exit")
    assert transcript(evs).endswith("> exit\nbye\n")


async def test_the_tui_refuses_to_run_without_a_terminal(
    start_runner, gateway: Gateway, bus: EventBus
) -> None:
    await start_runner()
    agent_id, reply = await gateway.create("tui-pipe", workspace="tui")
    assert reply.success, reply
    evs = await wait_events(
        bus, agent_topic(agent_id), lambda e: "crashed" in statuses(e), what="its refusal"
    )
    assert "must be a terminal" in "".join(o["data"] for o in outputs(evs, "stderr"))
