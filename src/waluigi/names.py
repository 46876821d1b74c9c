"""Checking names that waluigi prints: suite names, question ids, metric names, dataset names.

These strings end up in tables, progress bars, run-directory names and error messages on
the user's terminal. A control character in one of them is never a real name and can be
an attack: ``"q\\x1b]0;pwned\\x07"`` sets the terminal's title when ``waluigi eval`` prints
its table, other escape sequences move the cursor or rewrite what is on screen, and bidi
overrides make a name read differently from what it is ("Trojan Source"). So
:func:`check_identifier` refuses, at validation time, any name holding:

- a C0 control character, U+0000-U+001F: ESC, BEL, NUL, and tab, newline and carriage
  return too (an id never needs them, and a newline in an id breaks every table);
- DEL, U+007F, and the C1 controls U+0080-U+009F (U+009B is a one-byte CSI on some
  terminals, the same as ESC [);
- the bidi controls: the embeddings and overrides U+202A-U+202E, the isolates
  U+2066-U+2069, and the invisible marks U+200E, U+200F (LRM, RLM) and U+061C (ALM);
- the line and paragraph separators U+2028, U+2029 (line breaks to many editors and
  terminals, so the same problem as a newline).

Everything else is allowed: letters of any script, spaces, punctuation, emoji (their
zero-width joiner U+200D is not refused). Content (question text, answers, judge prompts,
a backdoor trigger) is not a name and is never checked here: it may hold any text.
Messages show a bad name with its characters escaped (``repr``), never raw.
"""

from __future__ import annotations

import unicodedata

from waluigi.errors import UserError

_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SEPARATORS = frozenset("\u2028\u2029")
# the C0 / DEL names a reader recognises; unicodedata has no names for control characters
_CONTROL_NAMES = {0x00: "NUL", 0x07: "BEL", 0x08: "BS", 0x09: "TAB", 0x0A: "LF", 0x0D: "CR", 0x1B: "ESC", 0x7F: "DEL", 0x9B: "CSI"}
_SHOWN = 80  # characters of a bad name shown in a message (a name could be a megabyte long)


def bad_character(value: str) -> int | None:
    """The index of the first character of ``value`` that a name may not hold, or None."""
    for index, char in enumerate(value):
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F or char in _BIDI or char in _SEPARATORS:
            return index
    return None


def safe_text(value: str) -> str:
    """``value`` as is when it holds no refused character, else escaped like ``repr`` (without
    the quotes), so that it can go into a message without reaching the terminal raw."""
    if bad_character(value) is None:
        return value
    return repr(value)[1:-1]


def _describe(char: str) -> str:
    code = ord(char)
    name = _CONTROL_NAMES.get(code) or unicodedata.name(char, "")
    if not name:
        name = "a C1 control character" if 0x80 <= code <= 0x9F else "a control character"
    return f"{char!r} (U+{code:04X}, {name})"


def check_identifier(value: str, where: str, what: str) -> str:
    """Return ``value`` when it is a printable name; otherwise raise :class:`UserError`.

    ``where`` is the place to name in the message (``FILE:LINE: question #3``, ``dataset``),
    ``what`` the kind of name (``field 'id'``, ``suite name``). The message shows the name and
    the bad character escaped, never raw."""
    index = bad_character(value)
    if index is None:
        return value
    shown = repr(value[:_SHOWN]) + ("..." if len(value) > _SHOWN else "")
    raise UserError(
        f"{safe_text(where)}: {what} {shown} holds {_describe(value[index])} at position {index}; names are "
        "printed on terminals, so they may not hold control characters (C0, DEL, C1), bidi controls or "
        "line separators: remove that character (question text and answers may hold any text; names may not)"
    )
