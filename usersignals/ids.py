"""The identifier rule: what a user id, item id, event id, tenant, dataset and event type may be.

An identifier is spliced into KV keys (``us:{<user_id>}:<dataset>:z``: the braces are Redis
Cluster's hash tag, ``:`` separates the parts), into SCAN patterns (a glob), into the lake's
filters and into URL paths. A character that means something in one of them would let one
identifier name another's data (erasing user ``a`` deleted user ``a}:views``'s keys), so the
platform refuses it at every edge: the indexing job (dead letter ``invalid_id``), the producer,
the API (400). One rule, here; ``ID_PATTERN`` is the same rule for the OpenAPI spec.

**Ids** (user, item, event): 1 to ``MAX_ID_CHARS`` characters, none of them

- ``{ } : * ? [ ] \\`` — special in a KV key, a hash tag or a glob pattern;
- the quotes ``"``, ``'`` and the backtick — no id can close a quoted literal of SQL, a shell or
  a log line, whatever code interpolates it later (the lake's own filters use hex literals). An
  e-mail address with an apostrophe (legal, rare) is refused: map it to an id first;
- ``/`` — a URL path cannot carry it (``%2F`` is decoded before routing), so a user id holding
  it could be stored but never read or erased through the API;
- whitespace (ASCII and Unicode), control characters (C0, DEL, C1), the invisible format
  characters that make two ids look alike (zero-width, bidi controls, soft hyphen, BOM, the
  combining grapheme joiner, the Hangul fillers; not the supplementary-plane tag characters,
  which a JSON Schema pattern cannot name), and lone surrogates;
- ``.`` and ``..`` as the whole id: URL clients and proxies resolve them as path segments.

Everything else passes: letters of every script, digits, emoji, ``. - _ + @ # % & = , ; ! $ ~``
and so on — e-mail addresses such as ``a.b+c@x.com``, the generator's ``u42``/``i7``/``1f3a-12``.
The rule is a fixed list of code points, not ``str.isprintable()``: that changes with the
Unicode version of each interpreter, and the job, the producer and the API must agree.

**Names** (tenant, dataset, event type; the registry's entries): lowercase snake_case,
``[a-z][a-z0-9_]*``, at most ``MAX_NAME_CHARS`` — a strict subset of the id rule.
"""
from __future__ import annotations

import re
from typing import Iterable

MAX_ID_CHARS = 256
MAX_NAME_CHARS = 63

# Special in a KV key, a hash tag, a glob, a quoted literal or a URL path (see the docstring).
SPECIAL = '{}:*?[]\\"\'`/'
# Controls, whitespace and invisible format characters: one class every regex engine reads alike
# (BMP escapes only: the same in Python's re, in ECMA-262 and in the Rust engines of JSON Schema).
_INVISIBLE = (r"\x00-\x20\x7f-\xa0\xad\u034f\u0600-\u0605\u061c\u06dd\u070f\u115f\u1160\u1680\u180e"
              r"\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\u3164\uffa0\ufeff\ufff9-\ufffb\ufffe\uffff")
_FORBIDDEN_CLASS = _INVISIBLE + re.escape(SPECIAL).replace("/", r"\/")
# Lone surrogates too: no UTF-8 (a Kafka key, a KV key) can hold one. JSON and URLs cannot carry
# them to the API, and a JSON Schema pattern cannot name them, so they are not in ID_PATTERN.
FORBIDDEN = re.compile(f"[{_FORBIDDEN_CLASS}\\ud800-\\udfff]")
# Whole ids that a URL path cannot carry: clients and proxies resolve them as path segments.
DOT_SEGMENTS = (".", "..")
# The OpenAPI ``pattern`` of an id (lengths go in minLength/maxLength).
# (No look-ahead for "not . or ..": the Rust regex engines of JSON Schema have none.)
ID_PATTERN = (f"^(?:[^{_FORBIDDEN_CLASS}.][^{_FORBIDDEN_CLASS}]*|\\.[^{_FORBIDDEN_CLASS}.][^{_FORBIDDEN_CLASS}]*"
              f"|\\.\\.[^{_FORBIDDEN_CLASS}]+)$")

NAME = re.compile(r"[a-z][a-z0-9_]*")
NAME_PATTERN = f"^[a-z][a-z0-9_]{{0,{MAX_NAME_CHARS - 1}}}$"


class InvalidId(ValueError):
    """An identifier the rule refuses; the message names it, the bad character and the rule."""


def id_problem(value: object, what: str = "id", max_chars: int = MAX_ID_CHARS) -> str | None:
    """Why ``value`` is not a valid id, or None when it is. ``what`` names it in the message."""
    if not isinstance(value, str):
        return f"{what} must be a string, got {type(value).__name__}"
    if not value:
        return f"{what} must not be empty"
    if len(value) > max_chars:
        return f"{what} has {len(value)} characters; at most {max_chars}"
    if value in DOT_SEGMENTS:
        return f"{what} {value!r} is a path segment a URL cannot carry; ids may not be '.' or '..'"
    bad = FORBIDDEN.search(value)
    if bad is not None:
        return (f"{what} {_shown(value)} has {_char(bad.group())} at position {bad.start()}; ids may not hold "
                f"{' '.join(SPECIAL)}, whitespace, control or invisible characters")
    return None


def is_id(value: object, max_chars: int = MAX_ID_CHARS) -> bool:
    return isinstance(value, str) and 0 < len(value) <= max_chars and value not in DOT_SEGMENTS \
        and FORBIDDEN.search(value) is None


def check_id(value: object, what: str = "id", max_chars: int = MAX_ID_CHARS) -> str:
    """``value`` if it is a valid id, else ``InvalidId``."""
    problem = id_problem(value, what, max_chars)
    if problem is not None:
        raise InvalidId(problem)
    return value  # type: ignore[return-value]


def first_invalid_id(values: Iterable[str], what: str = "id", max_chars: int = MAX_ID_CHARS) -> str | None:
    """The problem of the first invalid id of ``values``, or None: one scan of them all when
    they are valid (the serving path checks up to 100 user ids a request)."""
    values = list(values)
    try:
        joined = "".join(values)
    except TypeError:  # a value that is not a string: id_problem names it
        joined = None
    if joined is not None and FORBIDDEN.search(joined) is None and "" not in values \
            and max(map(len, values), default=0) <= max_chars and not any(v in DOT_SEGMENTS for v in values):
        return None
    return next((p for v in values if (p := id_problem(v, what, max_chars)) is not None), None)


def is_name(value: object, max_chars: int = MAX_NAME_CHARS) -> bool:
    """A registry name: lowercase snake_case starting with a letter, at most ``max_chars``."""
    return isinstance(value, str) and len(value) <= max_chars and NAME.fullmatch(value) is not None


def name_problem(value: object, what: str = "name", max_chars: int = MAX_NAME_CHARS) -> str | None:
    if is_name(value, max_chars):
        return None
    return (f"{what} {_shown(value)} is not a name: lowercase letters, digits and _, starting with a letter, "
            f"at most {max_chars} characters")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _char(c: str) -> str:
    return repr(c) if c in SPECIAL else f"U+{ord(c):04X}"   # the others are invisible: name the code point
