"""How fast the pure-Python BTF layer is: load, name index, lookups and fetcharg resolutions per second.

    python benchmarks/bench_btf.py [--btf /sys/kernel/btf/vmlinux] [--repeat R]

Prints (median of R runs each):

(a) reading the file (the floor: bytes from sysfs);
(b) ``BtfTypes.load``: header checks, the type section copied into 32-bit words and walked once;
(c) the first lookup by name, which builds the name index (one pass over all types);
(d) ``func()`` lookups/s (cached FuncInfo) and ``find()`` lookups/s of a struct (a dict hit);
(e) ``resolve_fetcharg`` resolutions/s for typical expressions (a parameter, a member of an embedded struct, a
    two-level pointer chain to a string, a bitfield) with a warm cache, and cold (a fresh BtfTypes per round:
    what the first probe of a session pays);
(f) ``func()`` of a misspelled name: the close-match suggestion of the error path.

The guest kernels' BTF (Debian 6.1, read from the images in ~/.cache/pytest-ktrace/guests) is timed too when
present, with ``--guests``.

RESULT lines (this kernel's BTF): (b) and the cold first probe, each against (a), reading the same bytes, the
floor of any BTF reader, measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, List

sys.path.insert(0, str(Path(__file__).parent))

from _results import Result, emit

try:
    from pytest_ktrace.btf import BtfTypes, UnknownFunction, btf_from_kernel_image, resolve_fetcharg
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from pytest_ktrace.btf import BtfTypes, UnknownFunction, btf_from_kernel_image, resolve_fetcharg

EXPRESSIONS = [
    ("__setup_irq", "irq"),
    ("__setup_irq", "desc->irq_data.irq"),
    ("__setup_irq", "new->thread->comm:string"),
    ("__setup_irq", "desc->action->name:string"),
    ("skb_checksum_help", "skb->pkt_type"),
]


def median_time(fn: Callable[[], object], repeat: int) -> float:
    times: List[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rate(fn: Callable[[], object], count: int, repeat: int) -> float:
    return count / median_time(lambda: [fn() for _ in range(count)], repeat)


def bench(label: str, data: bytes, repeat: int, arch: str) -> tuple[float, float, int]:
    """Prints the figures; returns the load's and the cold first probe's seconds, and how many resolutions that
    probe made."""
    print(f"== {label}: {len(data) / 1e6:.1f} MB")
    load = median_time(lambda: BtfTypes.load(data), repeat)
    btf = BtfTypes.load(data)
    print(f"(b) load:               {load * 1e3:8.1f} ms   ({len(btf)} types, {len(btf) / load / 1e6:.2f} M types/s)")

    def first_lookup() -> None:
        BtfTypes.load(data).func("__setup_irq")

    index = median_time(first_lookup, repeat) - load
    print(f"(c) name index:         {index * 1e3:8.1f} ms   (first lookup by name)")
    btf.func("__setup_irq")
    print(f"(d) func() lookups:     {rate(lambda: btf.func('request_threaded_irq'), 20000, repeat):10,.0f} /s")
    print(f"    find() lookups:     {rate(lambda: btf.find('irq_desc'), 20000, repeat):10,.0f} /s")
    present = [(f, e) for f, e in EXPRESSIONS if btf.find(f)]
    funcs = {name: btf.func(name) for name, _ in present}
    for name, expr in present:
        text = resolve_fetcharg(funcs[name], expr, arch)
        per_second = rate(lambda n=name, e=expr: resolve_fetcharg(funcs[n], e, arch), 5000, repeat)
        print(f"(e) {expr:<30} {per_second:10,.0f} /s   -> {text}")

    def cold() -> None:
        fresh = BtfTypes.load(data)
        for name, expr in present:
            resolve_fetcharg(fresh.func(name), expr, arch)

    cold_time = median_time(cold, repeat)
    print(f"    cold (load + index + {len(present)} resolutions): {cold_time * 1e3:.1f} ms")

    def misspelled() -> None:
        with contextlib.suppress(UnknownFunction):
            btf.func("setup_irqq")

    print(f"(f) unknown-function suggestion: {median_time(misspelled, repeat) * 1e3:.1f} ms")
    return load, cold_time, len(present)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--btf", default="/sys/kernel/btf/vmlinux", help="raw BTF file (default: this kernel's)")
    parser.add_argument("--arch", default="x86_64")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--guests", action="store_true", help="also the Debian 6.1 guest kernels' BTF")
    args = parser.parse_args()
    path = Path(args.btf)
    read = median_time(path.read_bytes, args.repeat)
    print(f"(a) read {path}: {read * 1e3:.1f} ms")
    load, cold, resolutions = bench(str(path), path.read_bytes(), args.repeat, args.arch)
    size = f"{path.stat().st_size / 1e6:.1f} MB"
    for metric, value in (
        (f"BtfTypes.load of {path} ({size})", load),
        (f"a cold first probe: load, name index and {resolutions} fetcharg resolutions", cold),
    ):
        emit(
            Result(
                benchmark="bench_btf",
                metric=metric,
                value=round(value * 1e3, 2),
                unit="ms",
                baseline="reading the same file's bytes",
                baseline_value=round(read * 1e3, 2),
                note=f"median of {args.repeat}",
            )
        )
    if args.guests:
        for image in sorted((Path.home() / ".cache" / "pytest-ktrace" / "guests").glob("*-*/kernel")):
            arch = image.parent.name.split("-")[0]
            start = time.perf_counter()
            blob = btf_from_kernel_image(image.read_bytes())
            print(f"\n(guest) BTF extracted from {image} in {(time.perf_counter() - start) * 1e3:.0f} ms")
            bench(f"{arch} guest (6.1)", blob, args.repeat, arch)


if __name__ == "__main__":
    main()
