"""The kernel a fake tracefs imitates, as every part of it sees it: :class:`FakeKernel`.

It holds the :class:`~pytest_ktrace.snapshots._snapshot.KernelSnapshot`, the CPUs, the trace clock and the probe
grammar's dialect, and answers what the kernel's own tables would: kallsyms addresses and names, and the filters an
event's fields allow.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from ..snapshots._kallsyms import KernelText
from ..snapshots._snapshot import KernelSnapshot
from ._filters import CompiledFilter, FilterField, compile_filter
from ._grammar import KernelDialect

__all__ = ["FakeKernel"]

_KERNEL_TEXT_BASE = 0xFFFF_FFFF_8100_0000
_FAKE_SYMBOL_SIZE = 0x100  # every snapshot symbol gets this size in the fake kallsyms


class FakeKernel:
    """``snapshot``'s kernel on ``cpus`` CPUs, with ``clock`` giving seconds since boot.

    ``buffer_events_per_cpu`` bounds each per-CPU ring buffer by a number of records instead of ``buffer_size_kb``
    bytes; ``file_exists`` answers for uprobe paths like the grammar's callback (None: this machine's files).
    """

    def __init__(
        self,
        snapshot: KernelSnapshot,
        cpus: int,
        clock: Callable[[], float],
        buffer_events_per_cpu: Optional[int],
        file_exists: Optional[Callable[[str], Optional[str]]],
    ) -> None:
        self.snapshot = snapshot
        self.cpus = cpus
        self.clock = clock
        self.buffer_events_per_cpu = buffer_events_per_cpu
        self.file_exists = file_exists
        self.dialect = KernelDialect(snapshot.release, snapshot.arch)
        self._kernel_text: Optional[KernelText] = None
        self._symbol_addresses: Optional[dict[str, int]] = None
        self.modules: dict[str, frozenset[str]] = {}  # loaded modules: name -> their text symbols

    # --- kallsyms ---------------------------------------------------------------------------------------------

    def text(self) -> KernelText:
        """The snapshot's kallsyms layout, or, for a snapshot taken without addresses, a made-up one: every text
        symbol, sorted by name, _FAKE_SYMBOL_SIZE bytes apart (what rendering and ``.function`` filters use)."""
        if self._kernel_text is None:
            text = self.snapshot.text
            if text is None:
                names = sorted(self.snapshot.symbols)
                pairs = [(_KERNEL_TEXT_BASE + index * _FAKE_SYMBOL_SIZE, name) for index, name in enumerate(names)]
                pairs.append((_KERNEL_TEXT_BASE + len(names) * _FAKE_SYMBOL_SIZE, "_etext"))
                text = KernelText(pairs)
            self._kernel_text = text
        return self._kernel_text

    def symbol_addresses(self) -> dict[str, int]:
        """Each symbol's (first) address, in the order of :meth:`text`."""
        if self._symbol_addresses is None:
            text = self.text()
            self._symbol_addresses = {}
            for start, name in zip(text.starts, text.names):
                self._symbol_addresses.setdefault(name, start)
        return self._symbol_addresses

    def symbolize(self, address: int, with_offset: bool) -> Optional[str]:
        """``sym+0xoff/0xsize`` (or ``sym``) of the symbol holding ``address``, None if none does."""
        found = self.text().symbol_at(address)
        if found is None:
            return None
        name, start, end = found
        if not with_offset:
            return name
        return f"{name}+0x{address - start:x}/0x{end - start:x}"

    def symbol_count(self, symbol: str) -> int:
        """How many functions kprobes could mean by ``[MOD:]SYMBOL`` (the grammar's ``symbol_exists``).

        ``MOD:SYMBOL`` looks in that module only; a module that is not loaded gives -1: the kernel accepts such
        a probe and registers it when the module comes (number_of_same_symbols() and validate_probe_symbol() in
        v6.12, register_trace_kprobe() in v6.1), but cannot tell it is at a function entry. A plain name counts
        the kernel's own symbols and every loaded module's."""
        module, colon, name = symbol.partition(":")
        if colon:
            if module not in self.modules:
                return -1
            return 1 if name in self.modules[module] else 0
        name = symbol
        count = 2 if name in self.snapshot.duplicate_symbols else int(self.snapshot.has_symbol(name))
        return count + sum(name in symbols for symbols in self.modules.values())

    def module_symbol_missing(self, symbol: str) -> bool:
        """Whether ``MOD:SYMBOL`` names a loaded module that has no such function (register_kprobe(): ENOENT)."""
        module, colon, name = symbol.partition(":")
        return bool(colon) and module in self.modules and name not in self.modules[module]

    # --- filters and logs -------------------------------------------------------------------------------------

    def compile_filter(self, expression: str, fields: Sequence[FilterField]) -> Optional[CompiledFilter]:
        """An event filter over ``fields`` as this kernel compiles it (raises FilterError)."""
        return compile_filter(
            expression,
            fields,
            nr_cpu_ids=self.cpus,
            kernel_functions=self.text(),
            trailing_operator_is_error=self.snapshot.answer("filter_trailing_operator") == "rejected",
        )

    def timestamp_prefix(self) -> str:
        """The ``[seconds.micros] `` an error_log entry starts with, for now."""
        micros = max(0, round(self.clock() * 1_000_000))
        seconds, micros = divmod(micros, 1_000_000)
        return f"[{seconds:5d}.{micros:06d}] "
