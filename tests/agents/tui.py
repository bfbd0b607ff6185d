"""Fixture agent: a terminal tool like aider's prompt — it refuses to run unless stdin and
stdout are a terminal, puts the terminal in raw mode, colours everything, draws its prompt
``> `` without a newline (with bracketed-paste mode codes around it), echoes the keys typed
itself and takes Enter (``\\r``) as the end of a command.

Commands: ``ask`` asks ``Apply the change? (Y)es/(N)o [Yes]:`` and reads the answer the same
way; ``tty`` prints the terminal's name and size; ``spin`` redraws a progress line with ``\\r``
before its result; ``exit`` ends; anything else is echoed back. Each answer ends with the
prompt again (the end of the turn). ``^D`` at the prompt ends it too.
"""

import os
import sys
import termios
import tty

if not (os.isatty(0) and os.isatty(1)):
    sys.stderr.write("tui: stdin and stdout must be a terminal (run me in a terminal)\n")
    sys.exit(2)

PROMPT = "\x1b[?2004h\x1b[1;32m> \x1b[0m"
BOLD, CYAN, RESET = "\x1b[1m", "\x1b[36m", "\x1b[0m"


def out(text: str) -> None:
    os.write(1, text.encode())


def read_line() -> str | None:
    """Keys until Enter, echoed as they come (raw mode: the tool draws its input)."""
    typed = ""
    while True:
        key = os.read(0, 1).decode(errors="replace")
        if key in ("\r", "\n"):
            out("\x1b[?2004l\r\n")
            return typed
        if key in ("\x04", ""):
            return None
        if key == "\x7f":
            typed = typed[:-1]
            out("\b \b")
            continue
        typed += key
        out(key)


saved = termios.tcgetattr(0)
tty.setraw(0)
try:
    columns, rows = os.get_terminal_size(1)
    out(f"{BOLD}tui fixture{RESET} \x1b]0;tui\x07ready\r\n")
    while True:
        out(PROMPT)
        command = read_line()
        if command is None or command == "exit":
            out("bye\r\n")
            break
        if command == "ask":
            out(f"{BOLD}Apply the change? (Y)es/(N)o [Yes]:{RESET} ")
            answer = read_line() or ""
            out("applied\r\n" if answer.lower() in ("", "y", "yes") else "skipped\r\n")
        elif command == "tty":
            out(f"{CYAN}tty:{RESET} {os.ttyname(0)} {columns}x{rows}\r\n")
        elif command == "spin":
            for step in ("|", "/", "-"):
                out(f"\r{CYAN}working {step}{RESET}\x1b[K")
            out("\r\x1b[Kspun\r\n")
        else:
            out(f"{CYAN}echo:{RESET} {command}\r\n")
finally:
    termios.tcsetattr(0, termios.TCSADRAIN, saved)
