"""What a terminal would show of one line a TUI printed: escape sequences interpreted or
dropped, readable text out (no I/O).

A tool run under a pseudo-terminal colours its output, moves the cursor, redraws its prompt
and spinners with ``\\r``: :func:`render_line` replays one line onto a blank terminal row —
printable characters overwrite at the cursor, ``\\r``/``\\b``/tab and the cursor and
erase-in-line sequences (``CSI n C|D|G|K``) move or clear, every other escape sequence
(colours, modes, titles: CSI, OSC, DCS/APC/PM/SOS strings, two-byte escapes) and control
character is dropped — and returns the row (blanks the tool printed kept: a prompt's
trailing space is part of it). Sequences that leave
the row (cursor up, screen clears) are dropped too: each line is read on its own.
"""

from __future__ import annotations

import re

#: One escape sequence: CSI (params, intermediates, final byte), OSC and the other string
#: sequences (to BEL or ST), two-byte and nF escapes; or one other control character.
_TOKEN = re.compile(
    r"\x1b\[(?P<params>[0-?]*)[ -/]*(?P<final>[@-~])"
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[ -/]*[0-~]"
    r"|\x1b"
    r"|(?P<control>[\x00-\x1f\x7f])"
)
_TAB = 8


def _number(params: str, default: int) -> int:
    first = params.split(";", 1)[0]
    return int(first) if first.isdigit() else default


def render_line(text: str) -> str:
    """The readable text of one line of terminal output (its ``\\r\\n`` / ``\\n`` included
    or not)."""
    row: list[str] = []
    col = 0

    def put(chars: str) -> None:
        nonlocal col
        for ch in chars:
            if col < len(row):
                row[col] = ch
            else:
                row.extend(" " * (col - len(row)))
                row.append(ch)
            col += 1

    at = 0
    for token in _TOKEN.finditer(text):
        put(text[at : token.start()])
        at = token.end()
        control = token.group("control")
        final = token.group("final")
        if control is not None:
            if control == "\r":
                col = 0
            elif control == "\b":
                col = max(0, col - 1)
            elif control == "\t":
                col = (col // _TAB + 1) * _TAB
        elif final is not None:
            params = token.group("params")
            if final == "C":
                col += _number(params, 1)
            elif final == "D":
                col = max(0, col - _number(params, 1))
            elif final == "G":
                col = max(0, _number(params, 1) - 1)
            elif final == "K":
                mode = _number(params, 0)
                if mode == 0:
                    del row[col:]
                elif mode == 1:
                    row[: col + 1] = " " * min(col + 1, len(row))
                elif mode == 2:
                    row.clear()
    put(text[at:])
    return "".join(row)
