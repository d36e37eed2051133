"""A whole trace at once: one index pass over its lines (in C where the helper was built) and its events
decoded per event kind when first needed; see "indexed parsing" below."""

from __future__ import annotations

import gc
import re
import sys
import threading
import weakref
from bisect import bisect_left
from collections import deque
from itertools import accumulate, chain, compress, count, repeat
from operator import add, eq
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Pattern,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    cast,
    overload,
)

from ._events import (
    Event,
    FieldValue,
    _events_from_headers,
    _fields_builder,
    _set_fields,
    _set_raw,
    _source_index,
)
from ._splitters import (
    _FB_INT,
    _FB_RAW,
    _FB_STR,
    _K_INT,
    _K_PTRSTR,
    _K_RAW,
    _K_STR,
    _int_or_str,
    _line_event,
    _PlanEntry,
    _ptr_string,
    _Splitter,
    _system_of,
)

# ------------------------------------------------------------------------------------------------------------
# indexed parsing, lazy decoding
# ------------------------------------------------------------------------------------------------------------
#
# ``TraceParser.parse`` does one cheap pass over the whole text, the index pass (``_speedups.c``, or
# ``_index_rows_python``: one ``split`` by ``_INDEX_RE``, a row per newline, for the line after it, and the first
# line matched on its own): it cuts every line that is an event header of a shape the reference parser
# (``TraceParser._parse_lines``, line by line) provably reads the same way ("H" lines) into its head
# (``comm-pid [cpu] [flags] ``), timestamp, event name and body, and leaves every other line whole. Every other line
# (LOST lines, headers, noise, continuations of multi-line strings, headers of odd shapes), and the H line before it
# when that one's event has a string that could continue on it, goes through the reference parser at once, in runs
# that start and end where the reference's state machine starts afresh. Those runs give ``lost``, ``unparsed`` and
# their events; an H line outside them is exactly one event of its name, nothing else. So the length of ``events``,
# ``lost``, ``unparsed`` and the per-event counts are exact after that pass, before any value is converted.
#
# The typed events of the H lines are built per event name when first needed (``_LazyEvents``), from the columns of
# their heads and timestamps alone (``_events._events_from_headers``). Their fields (and raw lines) are decoded when
# the first of them is read, for all of them at once (``_PendingFields``): the lines' bodies are joined and cut with
# one ``split`` per way the event prints (its own value patterns, unchanged but for ``[0-9]`` for ``\d`` on ASCII text;
# each column of values is then a slice of one flat list), the values converted column by column (a column of one
# repeated value converted once) and the dicts made by one generated comprehension per field list; a line that fits
# no form goes through the reference's per-line decoder. The splitters are those of parse time (a later catalog
# change does not change the result).
#
# Why an H line's header is the reference's: ``_INDEX_RE`` matches ``comm-pid [(tgid)] [cpu]`` up to the
# first ``]``, with a ``comm`` holding no ``-<ASCII digit>``, then ``[flags] <ts>: <name>:``, with ASCII digits
# and single-space-or-more separators only. The reference's lazy ``comm`` tries each ``-<digit>`` in turn; one
# before ours would need its own ``[cpu]`` ending at the same first ``]``, with only digits, blanks and a
# ``(tgid)`` in between, and our ``-<digit>`` then lies inside that tgid, where no blank follows it: so the
# reference's ``comm`` ends where ours does. pid, tgid and cpu are then fixed (the reference's wider classes
# stop at the same characters), and the optional flags column is tried first by both. They can only part on
# an all-digit name: the reference reads ``<ts>: <digits>: x`` as flags ``<ts>:`` and an ``other`` line, so
# such names are no H lines. The body is the same text, matched by the same value patterns. Lines with tabs
# or non-ASCII digits in the header are no H lines (the reference reads them, exactly as ever).

_H_LINE = (
    r"([^\]\n-]*(?:-(?![0-9])[^\]\n-]*)*-[0-9]+ +(?:\( *[0-9-]+\) +|)\[[0-9]+\] +(?:\S+ +|))"
    r"([0-9]+(?:\.[0-9]+|)): ([^\s:]+):"
)  # head, timestamp, name; no part of it matches a newline
_H_SEPARATOR = ": "  # between an H line's timestamp and name (the name is followed by ":")
# One row per newline, for the line after it: an H line's head, timestamp and name, then its body (the text
# between matches); None, None, None and the whole line for lines of another shape (the first line is
# _FIRST_INDEX_RE's). A pattern that starts with a newline lets re skip to the next line at memchr speed.
_INDEX_RE = re.compile(r"\n(?:" + _H_LINE + "|)")
_FIRST_INDEX_RE = re.compile(_H_LINE)
# an H line's head, as _HEADER_RE reads its comm, pid and cpu
_HEAD_RE = re.compile(r"\s*((?!\s).*?)-(\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(\d+)\] +(?:\S+ +|)", re.DOTALL)
_DASH_DIGIT_RE = re.compile(r"-\d")
_NUMERIC_NAME_RE = re.compile(r"\d+(?:\.\d+)?")
_HEX_COLUMN_RE = re.compile(r"0[xX][0-9a-fA-F]+(?:\n0[xX][0-9a-fA-F]+)*")
_DEC_COLUMN_RE = re.compile(r"-?[0-9]+(?:\n-?[0-9]+)*")

_FORM_FORWARD = 0
_FORM_REVERSE = 1
_FORM_FALLBACK = 2

# column conversions of a _FastForm
_C_INT = 0  # (decimal, error) groups of print_fields() -> masked / sign-reinterpreted int, or the error text
_C_STR = 1  # raw string, trailing NULs stripped
_C_PTRSTR = 2  # _ptr_string()
_C_RAW = 3  # as printed
_C_FBINT = 4  # default probe output: _int_or_str()
_C_FBSTR = 5  # default probe output: '"..."' -> inner text, '(fault)' as is

_Column = Tuple[int, int, int, int]  # (conversion, first group, mask, sign bit or 0)


class _FastForm:
    """One way an event prints (``fields`` forward or reverse, default probe output), for whole-text use:
    ``regex`` matches whole H lines of the event printed that way (``split`` over such lines joined by
    newlines, see :func:`_split_lines`), its groups are the values' (the header is matched, not captured:
    the header pass has read it); ``columns`` say how groups become the values, in the order of the
    reference parser's dict; ``dicts`` makes the events' ``fields``. ``ascii`` is ``regex`` for ASCII text,
    where the digits of the value patterns are ``[0-9]`` (a range check instead of a Unicode lookup per
    digit)."""

    __slots__ = ("ascii", "columns", "dicts", "regex")

    def __init__(self, regex: str, names: Sequence[str], columns: Sequence[_Column]) -> None:
        self.regex: Pattern[str] = re.compile(regex)
        # the value patterns' "-?\d+" only (re.escape()d names never hold a bare "-?")
        self.ascii: Pattern[str] = re.compile(regex.replace(r"-?\d+", "-?[0-9]+"))
        self.columns: Tuple[_Column, ...] = tuple(columns)
        self.dicts = _fields_builder(tuple(names))


def _split_lines(regex: Pattern[str], joined: str, count: int) -> Tuple[List[int], List[List[Any]]]:
    """``count`` lines, each after a newline (``joined``: ``"\\n" + "\\n".join(lines)``) -> (the indices of those
    ``regex`` matches whole, the columns of its groups for them: ``str``, None for a group that took no
    part). ``split`` returns the text between matches and each match's groups in one flat list: no tuple per
    line and no transposition, each column is a slice. A match is one line with the newline before it (see
    :func:`_marked`), so the text before a match is the lines skipped since the previous one, each with its
    newline: match j is line j plus the newlines up to it."""
    flat = regex.split(joined)
    k = regex.groups + 1
    columns = [flat[i::k] for i in range(1, k)]
    seps = flat[: len(flat) - 1 : k]
    if len(seps) == count:  # every line matched: 0, 1, 2, ...
        return list(range(count)), columns
    return list(map(add, range(len(seps)), accumulate(map(str.count, seps, repeat("\n"))))), columns


_VALUES = 0  # the group of a _FastForm's first value


def _marked(parts: Sequence[str]) -> str:
    """Body parts (each starting with ``" "``) -> the multi-line pattern for whole bodies of H lines (the text
    after ``"<name>:"``, where the reference's ``body`` group starts), each with the newline before it (a
    pattern that starts with a newline lets re skip to the next line at memchr speed, past the lines that do
    not fit). After that newline it matches within one line: ``.`` without DOTALL cannot cross a newline (so
    on one line it is the reference's DOTALL ``.``), and no other part matches a newline."""
    return r"(?m)\n" + "".join(parts) + "$"


def _fields_form(plan: Sequence[_PlanEntry], parts: Sequence[str]) -> _FastForm:
    kinds = {_K_INT: _C_INT, _K_STR: _C_STR, _K_PTRSTR: _C_PTRSTR, _K_RAW: _C_RAW}
    columns = []
    gi = _VALUES
    for _name, kind, mask, sign in plan:
        columns.append((kinds[kind], gi, mask, sign))
        gi += 2 if kind == _K_INT else 1
    return _FastForm(_marked(parts), [p[0] for p in plan], columns)


def _fallback_form(sp: _Splitter) -> _FastForm:
    """As ``_Splitter.split_fallback``: head values first, then the arguments, sorted by format order."""
    mask64 = (1 << 64) - 1
    entries: List[Tuple[str, _Column]]
    v = _VALUES
    if sp.fmt.fields[0].name == "__probe_func":  # groups: ret_ip, func
        entries = [("__probe_func", (_C_FBINT, v + 1, mask64, 0)), ("__probe_ret_ip", (_C_FBINT, v, mask64, 0))]
        gi = v + 2
    else:
        entries = [("__probe_ip", (_C_FBINT, v, mask64, 0))]
        gi = v + 1
    kinds = {_FB_STR: _C_FBSTR, _FB_INT: _C_FBINT, _FB_RAW: _C_RAW}
    for name, kind, mask, sign in sp.fallback_plan:
        entries.append((name, (kinds[kind], gi, mask, sign)))
        gi += 1
    order = {f.name: i for i, f in enumerate(sp.fmt.fields)}
    entries.sort(key=lambda kv: order.get(kv[0], 1 << 30))
    return _FastForm(_marked(sp.fallback_parts), [e[0] for e in entries], [e[1] for e in entries])


def _fast_form(sp: _Splitter, form: int) -> Optional[_FastForm]:
    try:
        return sp.fast[form]
    except KeyError:
        pass
    ff: Optional[_FastForm] = None
    if form == _FORM_FORWARD and sp.parts:
        ff = _fields_form(sp.plan, sp.parts)
    elif form == _FORM_REVERSE and len(sp.parts) > 1:
        ff = _fields_form(tuple(reversed(sp.plan)), tuple(reversed(sp.parts)))
    elif form == _FORM_FALLBACK and sp.fallback_parts:
        ff = _fallback_form(sp)
    sp.fast[form] = ff
    return ff


def _ints(col: Sequence[str], mask: int, sign: int, base: int = 10) -> List[int]:
    """``int(v, base)`` of every string, masked and reinterpreted (:func:`_fix_ints`); values that repeat a lot
    (pids, probe addresses, flags) converted once."""
    if len(col) > 64 and len(set(col[:256])) * 4 < min(len(col), 256):
        first = col[0]
        if col.count(first) == len(col):  # one value (a probe's address, a pid): compared, not hashed
            return _fix_ints([int(first, base)], mask, sign) * len(col)
        keys = list(dict.fromkeys(col))
        typed = _fix_ints(list(map(int, keys)) if base == 10 else list(map(int, keys, repeat(base))), mask, sign)
        return list(map(dict(zip(keys, typed)).__getitem__, col))
    return _fix_ints(list(map(int, col)) if base == 10 else list(map(int, col, repeat(base))), mask, sign)


def _fix_ints(vals: List[int], mask: int, sign: int) -> List[int]:
    """``v & mask`` reinterpreted as signed when ``sign`` (the sign bit) is set; a no-op when all are in range."""
    if not vals:
        return vals
    lo, hi = (-sign, sign - 1) if sign else (0, mask)
    if lo <= min(vals) and max(vals) <= hi:
        return vals
    if not sign:
        return list(map(mask.__and__, vals))
    # (v & mask) as a signed number is ((v + sign) & mask) - sign: three C-level maps, no Python loop
    return list(map(int.__sub__, map(mask.__and__, map(sign.__add__, vals)), repeat(sign)))


def _fb_ints(col: Sequence[str], mask: int, sign: int) -> List[FieldValue]:
    """``_int_or_str`` of every value, column-wise when all are plain hex or plain decimal numbers."""
    if col and col[0] == col[-1] and col.count(col[0]) == len(col):  # one value (a probe's address)
        return [_int_or_str(col[0], mask, sign)] * len(col)
    joined = "\n".join(col)
    if _HEX_COLUMN_RE.fullmatch(joined):
        return list(_ints(col, mask, sign, 16))
    if _DEC_COLUMN_RE.fullmatch(joined):
        return list(_ints(col, mask, sign))
    return [_int_or_str(v, mask, sign) for v in col]


def _convert(cols: Sequence[Sequence[str]], column: _Column) -> Sequence[FieldValue]:
    """One field's values, exactly as the reference parser converts them one by one."""
    conv, gi, mask, sign = column
    col = cols[gi]
    if conv == _C_INT:
        if all(col):  # no error printed instead of a number (its decimal group is then empty or None)
            return _ints(col, mask, sign)
        out: List[FieldValue] = []
        for d, e in zip(col, cols[gi + 1]):
            if d:
                n = int(d) & mask
                out.append(n - (sign << 1) if sign and n & sign else n)
            else:
                out.append(e)
        return out
    if conv == _C_STR:
        # values of one line each (no newline in them): "\0\n" in the joined column <=> a value ends with NUL
        if "\0\n" in "\n".join(col) + "\n":
            return [v.rstrip("\0") if v[-1:] == "\0" else v for v in col]
        return col
    if conv == _C_PTRSTR:
        return [_ptr_string(v) for v in col] if ":" in "".join(col) else col
    if conv == _C_FBINT:
        return _fb_ints(col, mask, sign)
    if conv == _C_FBSTR:
        if "(fault)" in col:
            return [v[1:-1] if v.startswith('"') else v for v in col]
        return [v[1:-1] for v in col]
    return col


def _prefix(head: str) -> Optional[Tuple[str, int, int]]:
    """An H line's head (``comm-pid [(tgid)] [cpu] [flags] ``) -> (comm, pid, cpu) as the reference header
    regex splits it, or None when the split could be ambiguous (a ``-<digit>`` inside comm)."""
    m = _HEAD_RE.fullmatch(head)
    if m is None:
        return None
    comm, pid, cpu = m.groups()
    if _DASH_DIGIT_RE.search(comm):
        return None
    return (comm, int(pid), int(cpu))


def _indices(names: Sequence[Optional[str]], name: Optional[str]) -> List[int]:
    return list(compress(range(len(names)), map(eq, names, repeat(name))))


def _runs(indices: List[int]) -> Iterator[Tuple[int, int]]:
    """Sorted line indices -> maximal [start, end) runs of consecutive ones."""
    if not indices:
        return
    a = b = indices[0]
    for i in indices[1:]:
        if i != b + 1:
            yield a, b + 1
            a = i
        b = i
    yield a, b + 1


_FEW_LINES = 8  # up to this many lines of one event are decoded line by line


def _fast_forms(sp: _Splitter, body: str) -> Iterator[_FastForm]:
    """The forms the lines of ``sp``'s event may print in, the one of ``body`` first. The forms exclude each
    other (a forward body starts with the first field, a reverse one with the last, the default probe output
    with ``" ("``), so the order they are tried in does not change any result."""
    ids = [_FORM_FORWARD, _FORM_REVERSE, _FORM_FALLBACK]
    if body[:2] == " (":
        ids = [_FORM_FALLBACK, _FORM_FORWARD, _FORM_REVERSE]
    elif sp.last and body.startswith(sp.last) and not body.startswith(sp.first):
        ids = [_FORM_REVERSE, _FORM_FORWARD, _FORM_FALLBACK]
    for form_id in ids:  # each compiled only when it is tried
        form = _fast_form(sp, form_id)
        if form is not None:
            yield form


def _prefixes_of(cache: Dict[str, Optional[Tuple[str, int, int]]], prefs: Sequence[str]) -> List[Any]:
    try:
        return list(map(cache.__getitem__, prefs))
    except KeyError:
        pass
    for p in set(prefs).difference(cache):
        cache[p] = _prefix(p)
    return list(map(cache.__getitem__, prefs))


class _Rows:
    """The rows of ``_INDEX_RE`` of a trace, one per line: an H line's head, timestamp, event name and body,
    or None, None, None and the whole line."""

    __slots__ = ("bodies", "heads", "names", "stamps")

    def __init__(
        self, heads: List[Optional[str]], stamps: List[Optional[str]], names: List[Optional[str]], bodies: List[str]
    ) -> None:
        self.heads = heads
        self.stamps = stamps
        self.names = names
        self.bodies = bodies

    def line(self, i: int) -> str:
        """Line ``i`` as it was."""
        name = self.names[i]
        if name is None:
            return self.bodies[i]
        return f"{self.heads[i]}{self.stamps[i]}{_H_SEPARATOR}{name}:{self.bodies[i]}"


_RowColumns = Tuple[List[Optional[str]], List[Optional[str]], List[Optional[str]], List[str]]


def _index_rows_python(text: str) -> _RowColumns:
    """The index pass: the rows of ``text`` (see :class:`_Rows`), one per line, no row for an empty line after
    the last newline. ``pytest_ktrace._speedups.index_rows`` gives the same, in C."""
    flat: List[Any] = _INDEX_RE.split(text)  # one row per newline: no part of _H_LINE matches a newline
    heads, stamps, names, bodies = flat[1::4], flat[2::4], flat[3::4], flat[4::4]
    first = flat[0]
    del flat
    m0 = _FIRST_INDEX_RE.match(first)
    if m0 is not None:
        heads.insert(0, m0.group(1))
        stamps.insert(0, m0.group(2))
        names.insert(0, m0.group(3))
        bodies.insert(0, first[m0.end() :])
    else:
        heads.insert(0, None)
        stamps.insert(0, None)
        names.insert(0, None)
        bodies.insert(0, first)
    if names[-1] is None and bodies[-1] == "":
        for column in (heads, stamps, names, bodies):
            column.pop()
    return heads, stamps, names, bodies


def _compiled_index() -> Optional[Callable[[str], _RowColumns]]:
    """``index_rows`` of the C helper, None when it was not built (no C compiler where the plugin was
    installed: the parser then runs the same index pass in Python, slower)."""
    try:
        from ._speedups import index_rows
    except ImportError:
        return None
    return index_rows


_index_rows: Callable[[str], _RowColumns] = _compiled_index() or _index_rows_python


def _lines_of(name: str, heads: Sequence[str], stamps: Sequence[str], bodies: Sequence[str]) -> List[str]:
    """The whole lines of H lines of event ``name``, from their rows."""
    sep = _H_SEPARATOR + name + ":"
    return [h + t + sep + b for h, t, b in zip(heads, stamps, bodies)]


class _Group(List[Event]):
    """The events of one event name, in trace order (a list the events' source can refer to weakly)."""

    __slots__ = ("__weakref__",)


def _decode_group(
    sp: Optional[_Splitter],
    name: str,
    where: List[int],
    rows: _Rows,
    prefixes: Dict[str, Optional[Tuple[str, int, int]]],
) -> List[Event]:
    """The events of the H lines ``where`` (indices, in order) of event ``name``: exactly :func:`_line_event`
    of each. Built from the columns of their heads and timestamps; their fields and raw lines are left to a
    :class:`_PendingFields` (decoded when the first of them is read)."""
    m = len(where)
    if not m:
        return []
    # the rows of H lines: no None in them
    heads = cast(List[str], list(map(rows.heads.__getitem__, where)))
    stamps = cast(List[str], list(map(rows.stamps.__getitem__, where)))
    bodies = list(map(rows.bodies.__getitem__, where))
    if m <= _FEW_LINES or sp is None or sp.fmt.name != name or _NUMERIC_NAME_RE.fullmatch(name):
        # a handful of lines: decoding them one by one costs less than compiling the whole-text patterns
        return [_line_event(sp, raw) for raw in _lines_of(name, heads, stamps, bodies)]
    hdrs = _prefixes_of(prefixes, heads)
    if None in hdrs:  # never met: the head of an H line always splits (see "indexed parsing" above)
        return [_line_event(sp, raw) for raw in _lines_of(name, heads, stamps, bodies)]
    source = _PendingFields(sp, name, heads, stamps, bodies)
    group = _Group(_events_from_headers(sp.fmt.system, name, hdrs, list(map(float, stamps)), source))
    source.watch(group)
    return group


class _PendingFields:
    """The fields and raw lines of events :func:`_decode_group` built from their headers alone (a
    :class:`~pytest_ktrace._events.FieldsSource`): the fields of all of them decoded at once, column-wise, when
    the first is read; the raw lines likewise. It refers to the list of its events weakly, so that events and
    source make no reference cycle: while that list lives (the parsed trace holds it) all of them are given
    theirs at once; after, each event takes its own when it is read. Thread-safe: each decoded once."""

    __slots__ = ("bodies", "fields", "group", "heads", "lock", "name", "raws", "splitter", "stamps")

    def __init__(self, splitter: _Splitter, name: str, heads: List[str], stamps: List[str], bodies: List[str]) -> None:
        self.splitter = splitter
        self.name = name
        self.heads = heads
        self.stamps = stamps
        self.bodies = bodies
        self.group: Optional[weakref.ReferenceType[_Group]] = None
        self.fields: Optional[List[Dict[str, FieldValue]]] = None
        self.raws: Optional[List[str]] = None
        self.lock = threading.Lock()

    def watch(self, group: _Group) -> None:
        """``group``: the list of its events, in order."""
        self.group = weakref.ref(group)

    def fill(self, event: Any) -> None:
        fields = self.fields
        if fields is None:
            with self.lock:
                fields = self.fields
                if fields is None:
                    fields = self.fields = self._give(_set_fields, self._decode())
        if event._fields is None:  # the group was gone when they were decoded
            _set_fields(event, fields[_source_index(event)])

    def fill_raw(self, event: Any) -> None:
        raws = self.raws
        if raws is None:
            with self.lock:
                raws = self.raws
                if raws is None:
                    raws = self.raws = self._give(_set_raw, _lines_of(self.name, self.heads, self.stamps, self.bodies))
        if event._raw is None:
            _set_raw(event, raws[_source_index(event)])

    def _decode(self) -> List[Dict[str, FieldValue]]:
        def line_of(j: int) -> str:
            return _lines_of(self.name, [self.heads[j]], [self.stamps[j]], [self.bodies[j]])[0]

        with _PausedGC():
            return _decode_fields(self.splitter, self.bodies, line_of)

    def _give(self, setter: Callable[[Any, Any], None], values: List[_T]) -> List[_T]:
        """Each event of the group, while it lives, its value; ``values`` back."""
        group = self.group() if self.group is not None else None
        if group is not None:
            deque(map(setter, group, values), maxlen=0)
        return values


def _decode_fields(sp: _Splitter, bodies: List[str], line_of: Callable[[int], str]) -> List[Dict[str, FieldValue]]:
    """The ``fields`` of the events of ``bodies``, the bodies of H lines of ``sp``'s event (``line_of(j)``:
    line ``j`` whole): exactly those of :func:`_line_event`, column-wise for the lines that fit a form of the
    event."""
    m = len(bodies)
    pending = list(range(m))
    pieces: List[Tuple[_FastForm, List[int], List[List[Any]]]] = []
    tried: List[_FastForm] = []
    while pending:
        # the form the first pending line prints in first (the forms exclude each other: any order gives the
        # same result, this one runs no regex over lines it cannot match)
        form = next((f for f in _fast_forms(sp, bodies[pending[0]]) if f not in tried), None)
        if form is None:
            break
        tried.append(form)
        sub = bodies if len(pending) == m else list(map(bodies.__getitem__, pending))
        joined = "\n".join(chain(("",), sub))
        fit, vcols = _split_lines(form.ascii if joined.isascii() else form.regex, joined, len(sub))
        del joined
        if not fit:
            continue
        if len(fit) == len(pending):
            pos, pending = pending, []
        else:
            pos = list(map(pending.__getitem__, fit))
            ok = [True] * len(pending)
            deque(map(ok.__setitem__, fit, repeat(False)), maxlen=0)
            pending = list(compress(pending, ok))
        pieces.append((form, pos, vcols))
    built = [form.dicts(len(pos), [_convert(vcols, c) for c in form.columns]) for form, pos, vcols in pieces]
    if len(built) == 1 and not pending:
        return built[0]
    out: List[Any] = [None] * m
    for (_form, pos, _vcols), dicts in zip(pieces, built):
        deque(map(out.__setitem__, pos, dicts), maxlen=0)
    for j in pending:
        out[j] = _line_event(sp, line_of(j)).fields
    return out


def _positions(names: List[Optional[str]], name: Optional[str], count: int) -> List[int]:
    """The indices of the ``count`` occurrences of ``name`` in ``names``."""
    if count * 64 > len(names):
        return _indices(names, name)
    out = []
    index = names.index
    i = -1
    for _ in range(count):
        i = index(name, i + 1)
        out.append(i)
    return out


class _PausedGC:
    """``with _PausedGC():`` -- the cyclic GC off (restored after, also on errors). The events are acyclic;
    letting the GC walk the growing lists over and over costs ~30% of the time for big traces."""

    __slots__ = ("was_enabled",)

    def __enter__(self) -> None:
        self.was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.was_enabled:
            gc.enable()


_T = TypeVar("_T")
_Run = Tuple[int, int, List[Event]]  # lines [start, end) read by the reference parser at parse time, their events


class _LazyEvents(Sequence[Event]):
    """The ``events`` of :meth:`TraceParser.parse`: a read-only sequence (equal to the list of the same events)
    whose length and per-event counts are known at once, and whose events are decoded per event name when
    first needed (see "indexed parsing" above). Thread-safe."""

    def __init__(
        self,
        rows: _Rows,
        counts: Dict[str, int],
        splitters: Dict[str, Optional[_Splitter]],
        runs: List[_Run],
        total: int,
    ) -> None:
        self._rows: Optional[_Rows] = rows  # the trace's rows (dropped once all groups are decoded)
        self._names: List[Optional[str]] = rows.names  # per line: the name of an H line outside the runs, else None
        self._counts = counts  # event name -> number of such lines
        self._splitters = splitters  # event name -> splitter, as at parse time
        self._runs = runs
        self._total = total
        self._groups: Dict[str, List[Event]] = {}  # decoded so far, per name (in trace order)
        self._where: Dict[str, List[int]] = {}  # line indices of the events of a name (as needed)
        self._all: Optional[List[Event]] = None
        self._prefixes: Dict[str, Optional[Tuple[str, int, int]]] = {}
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- decoding
    def _group(self, name: str) -> List[Event]:
        evs = self._groups.get(name)
        if evs is not None:
            return evs
        with self._lock, _PausedGC():
            evs = self._groups.get(name)
            if evs is None:
                evs = self._decode(name, self._positions(name))
            return evs

    def _decode(self, name: str, where: List[int]) -> List[Event]:
        rows = self._rows
        assert rows is not None  # dropped only when every group is decoded
        evs = self._groups[name] = _decode_group(self._splitters[name], name, where, rows, self._prefixes)
        if len(self._groups) == len(self._counts):
            self._rows = None
        return evs

    def _positions(self, name: str) -> List[int]:
        where = self._where.get(name)
        if where is None:
            where = self._where[name] = _positions(self._names, name, self._counts[name])
        return where

    def _list(self) -> List[Event]:
        """Every event, in trace order."""
        out = self._all
        if out is not None:
            return out
        with self._lock, _PausedGC():
            if self._all is not None:
                return self._all
            names = self._names
            todo = [k for k in self._counts if k not in self._groups]
            if len(todo) > 1:  # the lines of every event in one pass
                buckets: Dict[Optional[str], List[int]] = {k: [] for k in self._counts}
                buckets[None] = []
                deque(map(list.append, map(buckets.__getitem__, names), count()), maxlen=0)
                for k in todo:
                    self._where[k] = buckets[k]
                    self._decode(k, buckets[k])
                del buckets
            else:
                for k in todo:
                    self._group(k)
            its: Dict[Optional[str], Iterator[Event]] = {k: iter(evs) for k, evs in self._groups.items()}
            take = its.__getitem__
            out = []
            start = 0
            for a, b, evs in self._runs:
                if start < a:
                    out.extend(map(next, map(take, names[start:a])))
                out.extend(evs)
                start = b
            if start < len(names):
                out.extend(map(next, map(take, names[start:] if start else names)))
            if len(out) != self._total or any(next(it, None) is not None for it in its.values()):
                raise RuntimeError("pytest-ktrace internal error: decoded events do not match the index")
            self._all = out
            return out

    # ---------------------------------------------------------------- selections
    def select(self, keys: Iterable[Tuple[str, str]]) -> List[Event]:
        wanted = set(keys)
        sel = [k for k in self._counts if (_system_of(self._splitters[k], k), k) in wanted]
        extra = [(a, [e for e in evs if (e.system, e.name) in wanted]) for a, _b, evs in self._runs if evs]
        extra = [(a, evs) for a, evs in extra if evs]
        if len(sel) == 1 and not extra:
            return list(self._group(sel[0]))
        names = self._names
        its: Dict[Optional[str], Iterator[Event]] = {k: iter(self._group(k)) for k in sel}
        take = its.__getitem__
        idx = sorted(chain.from_iterable(map(self._positions, sel)))  # each sorted already: merged in O(n)
        out: List[Event] = []
        pos = 0
        for a, evs in extra:
            cut = bisect_left(idx, a, pos)
            if pos < cut:
                out.extend(map(next, map(take, map(names.__getitem__, idx[pos:cut]))))
            out.extend(evs)
            pos = cut
        if pos < len(idx):
            out.extend(map(next, map(take, map(names.__getitem__, idx[pos:]))))
        return out

    def count_of(self, system: str, name: str) -> int:
        n = self._counts.get(name, 0) if _system_of(self._splitters.get(name), name) == system else 0
        for _a, _b, evs in self._runs:
            n += sum(1 for e in evs if e.name == name and e.system == system)
        return n

    def event_counts(self) -> Dict[Tuple[str, str], int]:
        out = {(_system_of(self._splitters[k], k), k): n for k, n in self._counts.items()}
        for _a, _b, evs in self._runs:
            for e in evs:
                key = (e.system, e.name)
                out[key] = out.get(key, 0) + 1
        return out

    # ---------------------------------------------------------------- Sequence
    def __len__(self) -> int:
        return self._total

    def __bool__(self) -> bool:
        return self._total > 0

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> List[Event]: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[Event, List[Event]]:
        return self._list()[index]

    def __iter__(self) -> Iterator[Event]:
        return iter(self._list())

    def __reversed__(self) -> Iterator[Event]:
        return reversed(self._list())

    def __contains__(self, value: object) -> bool:
        return value in self._list()

    def index(self, value: Any, start: int = 0, stop: int = sys.maxsize) -> int:
        return self._list().index(value, start, stop)

    def count(self, value: Any) -> int:
        return self._list().count(value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _LazyEvents):
            return other is self or self._list() == other._list()
        if isinstance(other, list):
            return self._list() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # unhashable, as a list

    def __repr__(self) -> str:
        return repr(self._list())

    def __reduce__(self) -> Tuple[Any, ...]:
        return (list, (self._list(),))  # pickles / copies as the plain list
