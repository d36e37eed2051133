"""Trace mode: the test's instance ``trace`` file, read (with the command that produced it, or on demand), parsed
once per change, with the ring buffer's overwrites counted as lost events and call stacks attached to the events
of ``stacktrace=True`` probes."""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

from . import _elf as elf
from ._aggregates import AggregateSet
from ._errors import KtraceError, TracefsUnavailable, hide_for_ktrace_errors
from ._events import Event
from ._formats import FormatCatalog
from ._parse import ParsedTrace, TraceParser
from ._probe_builder import CALLER_FIELD
from ._probes import ProbeSpec
from ._stacks import TraceStacks, stack_key, stacks_by_event, symbolize_user, with_stacks
from ._target_files import ElfCopies
from .backends._base import Backend, Read
from .backends._features import MOUNT_HINT

__all__ = ["TraceCollector", "tracefs_gone"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

_ENTRIES = re.compile(r"^# entries-in-buffer/entries-written: (\d+)/(\d+)\s+#P:(\d+)", re.M)
_OVERRUN = re.compile(r"^overrun: (\d+)", re.M)


def tracefs_gone(backend: Backend) -> TracefsUnavailable:
    info = backend.describe()
    return TracefsUnavailable(
        f"tracefs is no longer mounted at {info.tracefs} on {info.name} (unmounted during the test?); mount it "
        f"again with: {MOUNT_HINT}",
        host=info.name,
        cause="tracefs not mounted",
    )


class TraceCollector:
    """The parsed trace of one instance (``instance_path``: ``instances/NAME``), kept until the next take."""

    def __init__(
        self, backend: Backend, instance_path: str, catalog: FormatCatalog, aggregates: AggregateSet, files: ElfCopies
    ) -> None:
        self.backend = backend
        self.instance_path = instance_path
        self.catalog = catalog
        self.aggregates = aggregates
        self.files = files
        self.parsed: Optional[ParsedTrace] = None
        self.text = ""
        self._parser = TraceParser(catalog)  # its splitters are kept from one take to the next
        self._parsed_version = -1  # the catalog's version when ``parsed`` was parsed
        self._stacks: Optional[tuple[str, TraceStacks]] = None

    def collect(self) -> ParsedTrace:
        """Read and parse the trace now."""
        result, mounted = self.backend.apply([Read(f"{self.instance_path}/trace"), Read("tracing_on")])
        if not mounted.ok:
            raise tracefs_gone(self.backend)
        if not result.ok:
            raise KtraceError(f"reading {self.instance_path}/trace failed: {result.errno_name} {result.error}")
        return self.take(result.data)

    def take(self, text: str) -> ParsedTrace:
        """``text`` is the instance's trace as just read: parse it and feed the aggregates."""
        if self.parsed is not None and text == self.text and self._parsed_version == self.catalog.version:
            # the same trace read again (teardown's last look after the test's): the same events, the same lost
            self.aggregates.feed_trace(self.parsed)
            return self.parsed
        self.text = text
        self._parsed_version = self.catalog.version
        parsed = self._parser.parse(text)
        match = _ENTRIES.search(text)
        overwritten = max(0, int(match.group(2)) - int(match.group(1))) if match else 0
        if overwritten and not parsed.lost:
            # `trace` shows no LOST line when the ring buffer overwrote old events; its header and the
            # per-CPU stats tell how many went, and where.
            cpus = int(match.group(3)) if match else 1
            parsed.lost.update(self._overruns(cpus) or {-1: overwritten})
        self.parsed = parsed
        self.aggregates.feed_trace(parsed)
        return parsed

    def _overruns(self, cpus: int) -> dict[int, int]:
        stats = self.backend.apply(
            [Read(f"{self.instance_path}/per_cpu/cpu{cpu}/stats", missing_ok=True) for cpu in range(cpus)]
        )
        found: dict[int, int] = {}
        for cpu, result in enumerate(stats):
            match = _OVERRUN.search(result.data)
            if match and int(match.group(1)):
                found[cpu] = int(match.group(1))
        return found

    def events_of(self, spec: ProbeSpec, parsed: ParsedTrace, *, stacked: bool) -> list[Event]:
        """The events of one probe (decoding only those), with their call stacks when the event records them."""
        events = parsed.of(spec.group, spec.event)
        if not stacked:
            return events
        if spec.kind in ("uprobe", "uretprobe"):
            return self._with_user_stacks(spec, list(events))
        return with_stacks(events, self._stacks_of_trace().kernel)

    def _stacks_of_trace(self) -> TraceStacks:
        text = self.text
        cached = self._stacks
        if cached is None or cached[0] is not text:
            cached = self._stacks = (text, stacks_by_event(text))
        return cached[1]

    def _with_user_stacks(self, spec: ProbeSpec, events: list[Event]) -> list[Event]:
        """User stacks (``options/userstacktrace``) of a uprobe's hits, named from the probed binary's symbols;
        the probe's own address in each hit gives that process's load bias."""
        stacks = self._stacks_of_trace().user
        path, _, offset_text = spec.location.rpartition(":")
        functions = elf.list_function_symbols(self.files.local_path(path))
        anchor_field = "__probe_func" if spec.is_return else "__probe_ip"
        out: list[Event] = []
        for event in events:
            frames = stacks.get(stack_key(event))
            anchor = event.fields.get(anchor_field)
            if not frames or not isinstance(anchor, int):
                out.append(event)
                continue
            caller = event.fields.get(CALLER_FIELD)
            if isinstance(caller, int):  # never on the walked stack (recursion repeats the same address)
                frames = (frames[0], caller, *frames[1:])
            named = symbolize_user(
                frames, anchor_address=anchor, anchor_offset=int(offset_text, 16), functions=functions
            )
            out.append(dataclasses.replace(event, stack=named))
        return out
