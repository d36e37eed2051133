"""Builds and caches guest images from stock Debian packages: kernel, busybox, dropbear, and an initramfs.

Cache layout under the cache root (``cache_dir``, else ``$KTRACE_CACHE_DIR``, else
``~/.cache/pytest-ktrace/guests``)::

    <arch>-<recipe hash>/      a finished image; appears only by atomic rename of a complete build directory
    debs/<debian arch>/        downloaded .debs, verified against apt's SHA256, reused by later builds
    .lock-<arch>               flock held while one process builds that arch
    .build-<arch>-*/           a build in progress (removed on failure, swept by the next builder)

The recipe hash covers everything this module puts into an image except the Debian package versions: looking
those up costs apt about a second, and the cached path must answer in milliseconds. The kernel version is
fixed when an image is first built (see ``manifest.json``); delete the image directory to pick up a newer
kernel.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from .._errors import MissingTool, TargetError
from .._files import file_error
from ._arches import ArchSpec, spec_for
from ._guest_files import (
    MODULE_LIST_PATH,
    SETUP_IRQ_TRIGGER_PATH,
    etc_files,
    init_script,
    setup_irq_trigger_script,
)
from ._initramfs import pack_initramfs

__all__ = ["GuestImage", "build_image", "default_cache_root"]

# Bump when the layout or contents of an image change in a way the recipe fingerprint does not capture.
_IMAGE_FORMAT = 1
_MANIFEST = "manifest.json"

# Dropbear's shared libraries (Debian 12), plus the loader from libc6. The ELF NEEDED walk below verifies this
# list covers every library dropbear and dropbearkey load, and copies only those into the image.
_LIBRARY_PACKAGES = ("libc6", "libtomcrypt1", "libtommath1", "zlib1g", "libcrypt1", "libgmp10")
_GUEST_BINARIES = ("bin/busybox", "usr/sbin/dropbear", "usr/bin/dropbearkey")
# What the guest runs besides its kernel, whoever built that kernel.
USERLAND_PACKAGES = ("busybox-static", "dropbear-bin", *_LIBRARY_PACKAGES)

# Without these the image cannot serve its purpose (real kprobes) or cannot boot from our initramfs.
_REQUIRED_KERNEL_CONFIG = (
    "CONFIG_KPROBES",
    "CONFIG_KPROBE_EVENTS",
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_RD_GZIP",
    "CONFIG_DEVTMPFS",
)

_APT_HINT = "apt-get install -y --no-install-recommends apt dpkg"


@dataclass(frozen=True)
class GuestImage:
    """A built, cached guest image."""

    arch: str
    kernel: Path
    initrd: Path
    key_path: Path  # root's private ed25519 key (OpenSSH format), authorised in the guest
    kernel_release: str  # e.g. "6.1.0-56-amd64"
    config_path: Path  # the kernel's config (boot/config-* from the .deb), for feature checks on the host
    # A kernel the user built (--ktrace-vm-kernel): the file it came from, where its config was read, whether it
    # has BTF, and the read-only disk holding its modules tree (mounted at /lib/modules/<release> in the guest).
    kernel_source: Optional[Path] = None
    config_source: str = ""
    btf: Optional[bool] = None
    modules_disk: Optional[Path] = None


@dataclass(frozen=True)
class _DebFile:
    package: str
    url: str
    filename: str
    size: int
    sha256: str


# ---------------------------------------------------------------------------------------------------- cache


def default_cache_root() -> Path:
    configured = os.environ.get("KTRACE_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache_home) / "pytest-ktrace" / "guests"


def kernel_meta_package(spec: ArchSpec, series: Optional[str] = None) -> str:
    """Debian's package that depends on the newest kernel of a series: ``linux-image-amd64`` (the release's
    default, 6.1 on bookworm) or ``linux-image-6.12-amd64``."""
    if series is not None and not re.fullmatch(r"\d+\.\d+", series):
        raise ValueError(f"kernel series {series!r} is not MAJOR.MINOR (e.g. 6.12)")
    return f"linux-image-{series}-{spec.debian_arch}" if series else f"linux-image-{spec.debian_arch}"


def _recipe_fingerprint(spec: ArchSpec, series: Optional[str] = None) -> str:
    recipe = {
        "format": _IMAGE_FORMAT,
        "arch": spec.name,
        "debian_arch": spec.debian_arch,
        "kernel_meta_package": kernel_meta_package(spec, series),
        "packages": list(USERLAND_PACKAGES),
        "binaries": list(_GUEST_BINARIES),
        "modules": list(spec.needed_modules),
        "init": init_script(),
        "trigger": setup_irq_trigger_script(spec.setup_irq_device_name, spec.setup_irq_trigger),
        "etc": dict(etc_files(_hostname(spec))),
    }
    encoded = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def _hostname(spec: ArchSpec) -> str:
    return f"ktrace-vm-{spec.name}"


def _load_cached(image_dir: Path) -> Optional[GuestImage]:
    try:
        manifest = json.loads((image_dir / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    disk = manifest.get("modules_disk")
    image = GuestImage(
        arch=manifest["arch"],
        kernel=image_dir / manifest["kernel"],
        initrd=image_dir / manifest["initrd"],
        key_path=image_dir / manifest["key"],
        kernel_release=manifest["kernel_release"],
        config_path=image_dir / manifest["config"],
        kernel_source=Path(manifest["kernel_source"]) if manifest.get("kernel_source") else None,
        config_source=manifest.get("config_source", ""),
        btf=manifest.get("btf"),
        modules_disk=image_dir / disk if disk else None,
    )
    files = (image.kernel, image.initrd, image.key_path, image.config_path)
    if not all(path.is_file() for path in (*files, *([image.modules_disk] if image.modules_disk else []))):
        return None
    return image


class _FileLock:
    """An exclusive flock on a lock file; released when the process dies, so a killed builder never wedges."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1

    def __enter__(self) -> _FileLock:
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc_info: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1


def build_image(arch: str, cache_dir: Optional[Path] = None, *, kernel: Optional[str] = None) -> GuestImage:
    """Return the cached image for ``arch``, building it from Debian packages first if there is none. ``kernel``:
    a Debian kernel series (``"6.12"``) instead of the release's default kernel."""
    spec = spec_for(arch)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    image_dir = cache_root / f"{spec.name}-{_recipe_fingerprint(spec, kernel)}"
    return cached_build(
        spec, cache_root, image_dir, lambda build_dir: _build_into(spec, build_dir, deb_dir(cache_root, spec), kernel)
    )


def deb_dir(cache_root: Path, spec: ArchSpec) -> Path:
    return cache_root / "debs" / spec.debian_arch


def cached_build(spec: ArchSpec, cache_root: Path, image_dir: Path, build_into: Callable[[Path], None]) -> GuestImage:
    """The image in ``image_dir``, made first by ``build_into(build_dir)`` if it is not there: one builder per
    arch at a time (flock), and the directory appears only complete (rename of the build directory)."""
    # Fast path without the lock: a finished image directory only ever appears by rename, complete.
    cached = _load_cached(image_dir)
    if cached is not None:
        return cached
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        with _FileLock(cache_root / f".lock-{spec.name}"):
            cached = _load_cached(image_dir)  # another process may have finished it while we waited
            if cached is not None:
                return cached
            for stale in cache_root.glob(f".build-{spec.name}-*"):
                # Only a builder holding this lock creates these, so any present now belongs to a dead process.
                shutil.rmtree(stale, ignore_errors=True)
            build_dir = Path(tempfile.mkdtemp(prefix=f".build-{spec.name}-", dir=cache_root))
            try:
                build_into(build_dir)
                if image_dir.exists():
                    # A leftover without a valid manifest (e.g. deleted files); replace it.
                    shutil.rmtree(image_dir)
                os.rename(build_dir, image_dir)
            except BaseException:
                shutil.rmtree(build_dir, ignore_errors=True)
                raise
    except OSError as exc:
        # e.g. a full disk (DiskFull): the build directory is gone again, so no half image is ever cached
        raise file_error(
            exc, exc.filename or cache_root, f"the {spec.name} guest image file", left="nothing of the build was kept"
        ) from None
    image = _load_cached(image_dir)
    if image is None:
        raise TargetError(f"guest image in {image_dir} is incomplete right after building it")
    return image


# ---------------------------------------------------------------------------------------------------- apt


def _require_tool(name: str, install_hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise MissingTool(f"{name} not found (needed to build the guest image); {install_hint}")
    return found


def _run(command: Sequence[str], *, cwd: Optional[Path] = None, what: str) -> str:
    result = subprocess.run(
        list(command), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise TargetError(
            f"{what} failed (exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}",
            command=" ".join(command),
        )
    return result.stdout


def _check_dpkg_architecture(spec: ArchSpec) -> None:
    dpkg = _require_tool("dpkg", _APT_HINT)
    native = _run([dpkg, "--print-architecture"], what="dpkg --print-architecture").split()
    foreign = _run([dpkg, "--print-foreign-architectures"], what="dpkg --print-foreign-architectures").split()
    if spec.debian_arch not in (*native, *foreign):
        raise MissingTool(
            f"apt cannot download {spec.debian_arch} packages for the {spec.name} guest; "
            f"run: dpkg --add-architecture {spec.debian_arch} && apt-get update"
        )


def _resolve_kernel_package(spec: ArchSpec, series: Optional[str]) -> str:
    apt_cache = _require_tool("apt-cache", _APT_HINT)
    meta = f"{kernel_meta_package(spec, series)}:{spec.debian_arch}"
    result = subprocess.run(
        [apt_cache, "depends", meta], stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    match = re.search(r"^\s*Depends:\s*(linux-image-[^\s:]+)", result.stdout, re.MULTILINE)
    if result.returncode != 0 or match is None:
        raise MissingTool(
            f"apt does not know {meta} ({result.stderr.strip() or 'no linux-image dependency listed'}); "
            f"run: apt-get update (and for arm64: dpkg --add-architecture arm64 && apt-get update)"
        )
    return match.group(1)


def _deb_files(spec: ArchSpec, packages: Sequence[str]) -> list[_DebFile]:
    apt_get = _require_tool("apt-get", _APT_HINT)
    qualified = [f"{package}:{spec.debian_arch}" for package in packages]
    output = _run([apt_get, "download", "--print-uris", *qualified], what="apt-get download --print-uris")
    by_filename: dict[str, _DebFile] = {}
    pattern = re.compile(r"^'(?P<url>[^']+)' (?P<filename>\S+) (?P<size>\d+) SHA256:(?P<sha256>[0-9a-f]{64})$")
    for line in output.splitlines():
        match = pattern.match(line.strip())
        if match:
            filename = match.group("filename")
            package = filename.split("_", 1)[0]
            by_filename[filename] = _DebFile(
                package, match.group("url"), filename, int(match.group("size")), match.group("sha256")
            )
    found = {deb.package for deb in by_filename.values()}
    missing = [package for package in packages if package not in found]
    if missing:
        raise TargetError(f"apt-get download --print-uris listed no .deb for: {', '.join(missing)}")
    return sorted(by_filename.values(), key=lambda deb: deb.package)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _ensure_debs(spec: ArchSpec, debs: Sequence[_DebFile], deb_cache: Path) -> list[Path]:
    """The .debs: cached ones whose size and SHA256 match apt's, the others fetched by apt-get download."""
    deb_cache.mkdir(parents=True, exist_ok=True)
    wanted = [deb for deb in debs if not _deb_is_valid(deb_cache / deb.filename, deb)]
    if wanted:
        apt_get = _require_tool("apt-get", _APT_HINT)
        download_dir = Path(tempfile.mkdtemp(prefix=".download-", dir=deb_cache))
        try:
            _run(
                [apt_get, "download", *(f"{deb.package}:{spec.debian_arch}" for deb in wanted)],
                cwd=download_dir,
                what="apt-get download",
            )
            for deb in wanted:
                downloaded = download_dir / deb.filename
                if not _deb_is_valid(downloaded, deb):
                    raise TargetError(f"{deb.filename} from apt-get download does not match apt's SHA256")
                os.replace(downloaded, deb_cache / deb.filename)
        finally:
            shutil.rmtree(download_dir, ignore_errors=True)
    return [deb_cache / deb.filename for deb in debs]


def _deb_is_valid(path: Path, deb: _DebFile) -> bool:
    try:
        if path.stat().st_size != deb.size:
            return False
    except OSError:
        return False
    return _sha256_of(path) == deb.sha256


# ------------------------------------------------------------------------------------------------ assembly


def _build_into(spec: ArchSpec, build_dir: Path, debs_dir: Path, series: Optional[str] = None) -> None:
    started = time.monotonic()
    kernel_package = _resolve_kernel_package(spec, series)
    kernel_release = kernel_package[len("linux-image-") :]
    stage = build_dir / "stage"
    debs = stage_packages(spec, [kernel_package, *USERLAND_PACKAGES], debs_dir, stage)

    config_source = stage / "boot" / f"config-{kernel_release}"
    kernel_source = stage / "boot" / f"vmlinuz-{kernel_release}"
    if not config_source.is_file() or not kernel_source.is_file():
        raise TargetError(f"{kernel_package} has no boot/vmlinuz-{kernel_release} or boot/config-{kernel_release}")
    config = _read_kernel_config(config_source)
    missing_options = [option for option in _REQUIRED_KERNEL_CONFIG if config.get(option) != "y"]
    if missing_options:
        raise TargetError(f"{kernel_package} lacks {', '.join(missing_options)}=y; it cannot serve as a guest")

    rootfs = build_dir / "rootfs"
    assemble_rootfs(spec, stage, rootfs)
    module_dir = stage / "lib" / "modules" / kernel_release
    modules = install_modules(module_dir, rootfs, kernel_release, module_load_order(module_dir, spec.needed_modules))
    key_path = build_dir / "id_ed25519"
    public_key = _write_client_key(key_path)
    _install_file(rootfs / "root/.ssh/authorized_keys", public_key.encode(), 0o600)
    pack_initramfs(rootfs, build_dir / "initrd.img")

    kernel_bytes = kernel_source.read_bytes()
    kernel_format = "Image" if spec.name == "arm64" else "bzImage"
    if spec.name == "x86_64" and config.get("CONFIG_PVH") == "y":
        vmlinux = _vmlinux_from_bzimage(kernel_bytes)
        if vmlinux is not None:
            # qemu boots a PVH ELF directly: no firmware real-mode setup and no decompression under emulation,
            # which halves boot time under TCG.
            kernel_bytes, kernel_format = vmlinux, "pvh-elf"
    (build_dir / "kernel").write_bytes(kernel_bytes)
    config_name = f"config-{kernel_release}"
    shutil.copyfile(config_source, build_dir / config_name)

    shutil.rmtree(stage)
    shutil.rmtree(rootfs)
    manifest = {
        "format": _IMAGE_FORMAT,
        "arch": spec.name,
        "kernel_release": kernel_release,
        "kernel": "kernel",
        "kernel_format": kernel_format,
        "initrd": "initrd.img",
        "key": key_path.name,
        "config": config_name,
        "packages": [{"package": deb.package, "filename": deb.filename, "sha256": deb.sha256} for deb in debs],
        "modules": modules,
        "build_seconds": round(time.monotonic() - started, 2),
    }
    # Written last: its presence is what marks a directory as a complete image.
    (build_dir / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def stage_packages(spec: ArchSpec, packages: Sequence[str], deb_cache: Path, stage: Path) -> list[_DebFile]:
    """Download (or reuse from ``deb_cache``) the Debian packages of the guest's arch and extract them into
    ``stage``; return what was extracted."""
    dpkg_deb = _require_tool("dpkg-deb", _APT_HINT)
    _require_tool("cpio", "apt-get install cpio")
    _check_dpkg_architecture(spec)
    debs = _deb_files(spec, packages)
    for deb_path in _ensure_debs(spec, debs, deb_cache):
        _run([dpkg_deb, "-x", str(deb_path), str(stage)], what=f"dpkg-deb -x {deb_path.name}")
    return debs


def _read_kernel_config(path: Path) -> Mapping[str, str]:
    options: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, equals, value = line.partition("=")
        if equals and name.startswith("CONFIG_"):
            options[name] = value
    return options


def _install_file(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def _write_client_key(private_path: Path) -> str:
    """Generate root's ed25519 key pair; return the authorized_keys line."""
    key = Ed25519PrivateKey.generate()
    private_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    # Created 0600 from the start: OpenSSH refuses a private key other users can read.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(private_bytes)
    public_line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = public_line.decode() + " pytest-ktrace\n"
    private_path.with_name(private_path.name + ".pub").write_text(line)
    return line


def assemble_rootfs(spec: ArchSpec, stage: Path, rootfs: Path) -> None:
    """Lay out the guest's root from the extracted packages in ``stage``: busybox, dropbear, init, /etc."""
    for directory, mode in (
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc/dropbear", 0o755),
        ("etc/ktrace", 0o755),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("var", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("root/.ssh", 0o700),
    ):
        path = rootfs / directory
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
    os.symlink("../run", rootfs / "var/run")

    library_dirs = [f"lib/{spec.gnu_triplet}", f"usr/lib/{spec.gnu_triplet}", "lib", "usr/lib"]
    for relative in _elf_closure(stage, _GUEST_BINARIES, library_dirs):
        _copy_with_symlinks(stage, relative, rootfs)

    _install_file(rootfs / "init", init_script().encode(), 0o755)
    trigger = setup_irq_trigger_script(spec.setup_irq_device_name, spec.setup_irq_trigger)
    _install_file(rootfs / SETUP_IRQ_TRIGGER_PATH, trigger.encode(), 0o755)
    for relative, text in etc_files(_hostname(spec)).items():
        _install_file(rootfs / relative, text.encode(), 0o644)


def _symlink_chain(stage: Path, relative: str) -> Iterator[str]:
    """``relative`` and every path its symlinks lead to inside ``stage``, ending at the regular file."""
    for _ in range(16):
        yield relative
        path = stage / relative
        if not path.is_symlink():
            if not path.is_file():
                raise TargetError(f"{relative} is missing from the extracted Debian packages")
            return
        target = os.readlink(path)
        if target.startswith("/"):
            relative = os.path.normpath(target.lstrip("/"))
        else:
            relative = os.path.normpath(os.path.join(os.path.dirname(relative), target))
    raise TargetError(f"symlink loop at {relative} in the extracted Debian packages")


def _copy_with_symlinks(stage: Path, relative: str, rootfs: Path) -> None:
    for link_or_file in _symlink_chain(stage, relative):
        source, destination = stage / link_or_file, rootfs / link_or_file
        if destination.exists() or destination.is_symlink():
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), destination)
        else:
            shutil.copy2(source, destination)


def _elf_dependencies(path: Path) -> tuple[Optional[str], list[str]]:
    """(PT_INTERP, DT_NEEDED sonames) of an ELF file."""
    with path.open("rb") as stream:
        elf = ELFFile(stream)
        interpreter: Optional[str] = None
        for segment in elf.iter_segments():
            if isinstance(segment, InterpSegment):
                interpreter = str(segment.get_interp_name())
        needed: list[str] = []
        for section in elf.iter_sections():
            if isinstance(section, DynamicSection):
                # pyelftools sets the soname as a dynamic attribute ("needed") on DT_NEEDED tags.
                needed.extend(str(vars(tag)["needed"]) for tag in section.iter_tags() if tag.entry.d_tag == "DT_NEEDED")
        return interpreter, needed


def _elf_closure(stage: Path, binaries: Sequence[str], library_dirs: Sequence[str]) -> list[str]:
    """The binaries plus, transitively, their dynamic loader and every shared library they need."""
    result: list[str] = []
    pending = list(binaries)
    seen: set[str] = set()
    while pending:
        relative = pending.pop()
        if relative in seen:
            continue
        seen.add(relative)
        result.append(relative)
        real = list(_symlink_chain(stage, relative))[-1]
        interpreter, needed = _elf_dependencies(stage / real)
        if interpreter is not None:
            pending.append(os.path.normpath(interpreter.lstrip("/")))
        for soname in needed:
            for directory in library_dirs:
                candidate = f"{directory}/{soname}"
                if (stage / candidate).exists():
                    pending.append(candidate)
                    break
            else:
                raise TargetError(
                    f"{relative} needs {soname}, which none of the extracted packages "
                    f"({', '.join(_LIBRARY_PACKAGES)}) provides"
                )
    return sorted(result)


def _normalise_module_name(name: str) -> str:
    return name.replace("-", "_")


# How a module file may be compressed (CONFIG_MODULE_COMPRESS_*), plain first: that one is preferred.
_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def _shipped_modules(module_dir: Path) -> dict[str, str]:
    """Module name -> path relative to ``module_dir`` (a plain ``.ko`` preferred over a compressed one)."""
    shipped: dict[str, str] = {}
    for suffix in _MODULE_SUFFIXES:
        for path in sorted(module_dir.glob(f"kernel/**/*{suffix}")):
            name = _normalise_module_name(path.name[: -len(suffix)])
            shipped.setdefault(name, path.relative_to(module_dir).as_posix())
    return shipped


def module_load_order(module_dir: Path, wanted: Sequence[str], *, optional: Sequence[str] = ()) -> list[str]:
    """Paths (relative to ``module_dir``, a lib/modules/<release>) of the wanted modules not built in,
    dependencies first; ``optional`` ones are left out when the tree does not have them.

    Dependencies come from each module's own ``.modinfo`` ``depends=`` (a .deb ships no modules.dep).
    """
    builtin_list = module_dir / "modules.builtin"
    builtin = {
        _normalise_module_name(Path(line.strip()).stem)
        for line in (builtin_list.read_text().splitlines() if builtin_list.exists() else [])
        if line.strip()
    }
    # Newer Debian kernels (6.12) ship modules xz-compressed; install_modules() decompresses them.
    shipped = _shipped_modules(module_dir)
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        name = _normalise_module_name(name)
        if name in builtin or shipped.get(name) in order:
            return
        if name not in shipped:
            raise TargetError(f"kernel {module_dir.name} has module {name} neither built in nor in {module_dir}")
        if name in visiting:
            raise TargetError(f"module dependency cycle through {name} in kernel {module_dir.name}")
        visiting.add(name)
        for dependency in _module_dependencies(_module_bytes(module_dir / shipped[name])):
            visit(dependency)
        visiting.discard(name)
        order.append(shipped[name])

    for name in wanted:
        visit(name)
    for name in optional:
        if _normalise_module_name(name) in shipped:
            visit(name)
    return order


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        zstd = _require_tool("zstd", "apt-get install zstd (the modules are zstd-compressed)")
        return subprocess.run([zstd, "-dc"], input=data, capture_output=True, check=True).stdout
    return data


def install_modules(module_dir: Path, rootfs: Path, kernel_release: str, order: Sequence[str]) -> list[str]:
    """Copy the modules (decompressed: the guest's busybox insmod loads plain ones) into the rootfs and write
    the list init loads them from; return their paths relative to lib/modules/<release>, in load order."""
    module_root = f"lib/modules/{kernel_release}"
    installed = []
    for module in order:
        relative = module[: module.rindex(".ko") + len(".ko")]
        _install_file(rootfs / module_root / relative, _module_bytes(module_dir / module), 0o644)
        installed.append(relative)
    module_list = "".join(f"/{module_root}/{module}\n" for module in installed)
    _install_file(rootfs / MODULE_LIST_PATH, module_list.encode(), 0o644)
    return installed


def _module_dependencies(module: bytes) -> list[str]:
    section = ELFFile(io.BytesIO(module)).get_section_by_name(".modinfo")
    data = bytes(section.data()) if section is not None else b""
    for entry in data.split(b"\0"):
        if entry.startswith(b"depends="):
            return [name for name in entry[len(b"depends=") :].decode().split(",") if name]
    return []


# ---------------------------------------------------------------------------------------------------- kernel


def _vmlinux_from_bzimage(bzimage: bytes) -> Optional[bytes]:
    """The ELF vmlinux inside an xz-compressed x86 bzImage, or None if it is not one."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        return None
    setup_sectors = bzimage[0x1F1] or 4  # 0 means 4 in the boot protocol
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sectors + 1) * 512 + payload_offset
    payload = bzimage[start : start + payload_length]
    if not payload.startswith(b"\xfd7zXZ\x00"):
        return None
    try:
        # One decompressor, not lzma.decompress: the kernel appends its size after the xz stream.
        vmlinux = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    except lzma.LZMAError:
        return None
    return vmlinux if vmlinux.startswith(b"\x7fELF") else None
