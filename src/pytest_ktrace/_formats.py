"""Event format files (``events/<system>/<event>/format``) -> :class:`EventFormat`, and the
:class:`FormatCatalog` a :class:`~pytest_ktrace._parse.TraceParser` decodes events with."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ._errors import KtraceError

__all__ = ["EventFormat", "FieldFormat", "FormatCatalog", "parse_format"]


@dataclass(frozen=True)
class FieldFormat:
    """One ``field:`` line of an event's ``format`` file. ``ctype`` is the kernel's type string, arrays
    included (``char[16]``, ``__data_loc char[]``, ``unsigned long[6]``)."""

    name: str
    ctype: str
    offset: int
    size: int
    signed: bool

    @property
    def is_string(self) -> bool:
        """A field the kernel treats as a string (``filter_assign_type``): ``__data_loc char[]``,
        ``__rel_loc char[]``, ``char[N]`` and ``char *`` / ``const char *``."""
        t = self.ctype
        if "char" in t and ("__data_loc" in t or "__rel_loc" in t or "[" in t):
            return True
        return t in ("char *", "const char *")

    @property
    def is_pointer_string(self) -> bool:
        """``char *`` / ``const char *``: printed as ``(0x<ptr>)`` or ``(0x<ptr>:<string>)``."""
        return self.ctype in ("char *", "const char *")

    @property
    def is_dynamic(self) -> bool:
        """``__data_loc`` / ``__rel_loc``: the 4 bytes in the record locate data elsewhere in the event."""
        return "__data_loc" in self.ctype or "__rel_loc" in self.ctype

    @property
    def is_array(self) -> bool:
        return "[" in self.ctype

    @property
    def is_common(self) -> bool:
        return self.name.startswith("common_")

    @property
    def is_integer(self) -> bool:
        """Printed as a number: a non-string, non-dynamic field of 1, 2, 4 or 8 bytes (fixed arrays of such
        sizes included, as the raw bits)."""
        return not self.is_string and not self.is_dynamic and self.size in (1, 2, 4, 8)


@dataclass(frozen=True)
class EventFormat:
    """A parsed ``events/<system>/<name>/format`` file. ``fields`` excludes the ``common_*`` fields, which are
    kept in ``common_fields``."""

    system: str
    name: str
    id: int
    fields: Tuple[FieldFormat, ...]
    print_fmt: str = ""
    common_fields: Tuple[FieldFormat, ...] = ()

    @property
    def full_name(self) -> str:
        return f"{self.system}:{self.name}"

    @property
    def field_names(self) -> Tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Optional[FieldFormat]:
        for f in self.fields:
            if f.name == name:
                return f
        for f in self.common_fields:
            if f.name == name:
                return f
        return None

    @property
    def is_probe(self) -> bool:
        """A k/u(ret)probe-like event: its first field is ``__probe_ip`` or ``__probe_func``."""
        return bool(self.fields) and self.fields[0].name in ("__probe_ip", "__probe_func")


_FIELD_RE = re.compile(
    r"field:(?P<decl>[^;]*);\s*offset:\s*(?P<offset>\d+);\s*size:\s*(?P<size>\d+);"
    r"(?:\s*signed:\s*(?P<signed>-?\d+);)?\s*"
)
_DECL_RE = re.compile(r"(?P<type>.*?)\s*\b(?P<name>[A-Za-z_]\w*)\s*(?P<arr>\[[^\]]*\])?")


def _parse_decl(decl: str) -> Tuple[str, str]:
    m = _DECL_RE.fullmatch(decl.strip())
    if m is None or not m.group("type").strip():
        raise ValueError(f"cannot split field declaration {decl!r} into type and name")
    ctype = " ".join(m.group("type").split())
    arr = m.group("arr")
    if arr:
        ctype += arr.replace(" ", "")
    return ctype, m.group("name")


def _parse_field_line(line: str, where: str) -> FieldFormat:
    """One ``field:TYPE NAME; offset:N; size:N; signed:N;`` line of a format file."""
    m = _FIELD_RE.fullmatch(line)
    if m is None:
        raise KtraceError(f"{where}: malformed field line {line!r}")
    try:
        ctype, fname = _parse_decl(m.group("decl"))
    except ValueError as exc:
        raise KtraceError(f"{where}: {exc}") from None
    signed = m.group("signed")
    return FieldFormat(
        name=fname,
        ctype=ctype,
        offset=int(m.group("offset")),
        size=int(m.group("size")),
        signed=bool(signed) and int(signed) != 0,
    )


# What follows a format file's ``name:`` and ``ID:`` lines is the same for every probe of one layout (each test
# makes its own probes, with new names and IDs), so it is parsed once per layout: (system, that text) -> the
# parse. Bounded: cleared when full.
_FORMATS: Dict[Tuple[str, str], EventFormat] = {}
_FORMATS_KEPT = 256
_FORMAT_HEAD_RE = re.compile(r"name: (\S+)\nID: ([0-9]+)\n")


def parse_format(text: str, system: str) -> EventFormat:
    """Parse the text of an event ``format`` file. Raises :class:`KtraceError` naming the line on garbage."""
    if not isinstance(text, str):
        raise KtraceError(f"format of an event in {system!r}: expected text, got {type(text).__name__}")
    head = _FORMAT_HEAD_RE.match(text)
    if head is None:
        return _parse_format(text, system)
    key = (system, text[head.end() :])
    known = _FORMATS.get(key)
    if known is not None:
        return EventFormat(
            system, head.group(1), int(head.group(2)), known.fields, known.print_fmt, known.common_fields
        )
    parsed = _parse_format(text, system)
    # kept only when the first two lines alone give the name and ID (no later line sets them again)
    if "name:" not in key[1] and "ID:" not in key[1]:
        if len(_FORMATS) >= _FORMATS_KEPT:
            _FORMATS.clear()
        _FORMATS[key] = parsed
    return parsed


def _parse_format(text: str, system: str) -> EventFormat:
    name: Optional[str] = None
    event_id: Optional[int] = None
    fields: List[FieldFormat] = []
    print_fmt: Optional[str] = None
    seen_format = False
    lines = text.split("\n")
    where = f"format file of an event in system {system!r}"
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("name:"):
            name = line[5:].strip()
            where = f"format file of {system}:{name}"
            if not name or any(c.isspace() for c in name):
                raise KtraceError(f"{where}: line {lineno}: bad event name {raw!r}")
        elif line.startswith("ID:"):
            try:
                event_id = int(line[3:].strip())
            except ValueError:
                raise KtraceError(f"{where}: line {lineno}: ID is not a number: {raw!r}") from None
        elif line == "format:":
            seen_format = True
        elif line.startswith("field:"):
            fields.append(_parse_field_line(line, f"{where}: line {lineno}"))
        elif line.startswith("print fmt:"):
            # the rest of the file is the print format (it may span lines)
            first = raw.split("print fmt:", 1)[1].lstrip()
            print_fmt = "\n".join([first, *lines[lineno:]]).rstrip("\n")
            break
        else:
            raise KtraceError(f"{where}: line {lineno}: unexpected line {raw!r}")
    if name is None:
        raise KtraceError(f"{where}: no 'name:' line (is this an event format file?)")
    if event_id is None:
        raise KtraceError(f"{where}: no 'ID:' line")
    if not seen_format and not fields:
        raise KtraceError(f"{where}: no 'format:' section")
    common = tuple(f for f in fields if f.is_common)
    own = tuple(f for f in fields if not f.is_common)
    names = [f.name for f in own]
    if len(set(names)) != len(names):
        raise KtraceError(f"{where}: duplicate field names in {names}")
    return EventFormat(
        system=system, name=name, id=event_id, fields=own, print_fmt=print_fmt or "", common_fields=common
    )


class FormatCatalog:
    """Known event formats, looked up by event name (as it appears in trace lines) or ``"system:name"``.

    When two systems define the same event name, a bare-name lookup returns the one added last (the probe a
    test just created wins over an older event of that name)."""

    def __init__(self, formats: Sequence[EventFormat] = ()) -> None:
        self._by_name: Dict[str, EventFormat] = {}
        self._by_full: Dict[str, EventFormat] = {}
        self.version = 0  # bumped on every change (parsers drop their cached splitters)
        for fmt in formats:
            self.add(fmt)

    def add(self, fmt: EventFormat) -> None:
        self.version += 1
        self._by_name[fmt.name] = fmt
        self._by_full[fmt.full_name] = fmt

    def remove(self, name: str) -> None:
        """Forget an event (``"system:name"`` or bare name); unknown names are ignored."""
        fmt = self.get(name)
        if fmt is None:
            return
        self.version += 1
        self._by_full.pop(fmt.full_name, None)
        if self._by_name.get(fmt.name) is fmt:
            del self._by_name[fmt.name]
            for other in reversed(list(self._by_full.values())):
                if other.name == fmt.name:
                    self._by_name[fmt.name] = other
                    break

    def get(self, name: str) -> Optional[EventFormat]:
        if ":" in name:
            return self._by_full.get(name)
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __len__(self) -> int:
        return len(self._by_full)

    def __iter__(self) -> Iterator[EventFormat]:
        return iter(list(self._by_full.values()))
