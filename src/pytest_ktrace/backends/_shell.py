"""POSIX ``sh`` scripts for a remote tracefs, and the parsers of their output (pure functions, no I/O).

The SSH backend sends each script on the stdin of ``sh -s``. The target may have nothing but busybox, so the
scripts use only POSIX sh, ``dd``, ``cat``, ``mkdir``, ``rmdir``, ``uname``, ``id``, ``grep``, ``tr`` and
``setsid`` (optional for ``run``, needed for ``spawn``); they run the same under dash, bash and busybox ash, with GNU
coreutils or busybox applets.

Every value from the caller is single-quoted (:func:`quote`), so data may contain quotes, ``$retval``, backticks,
``;``, newlines or ``$(...)`` and still reaches the kernel byte for byte.

Output framing: every frame is ``\\n<nonce> <TAG> <fields>\\n`` followed by an optional payload that runs up to the
next frame. The nonce is random for each script (:func:`new_nonce`), so no file content or command output can
forge a frame; splitting the output on ``\\n<nonce> `` gives back every payload exactly (the ``\\n`` in front of
each frame belongs to the frame, so content without a trailing newline survives too).

Writes go through ``printf '%s' DATA | dd of=FILE bs=LEN oflag=append conv=notrunc``: one ``write()`` syscall of
the whole command (``bs`` is its byte length; ``iflag=fullblock`` is added when the data is larger than a pipe's
atomic size and the ``dd`` supports it), O_APPEND and never O_TRUNC, and a failure is reported by ``dd`` as
``dd: error writing 'FILE': <strerror>`` (GNU and busybox alike), which :func:`errno_from_text` maps back to the
errno name.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import secrets
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from .._errors import hide_for_ktrace_errors
from ._base import Mkdir, Op, OpResult, Read, Remove, Rmdir, Write

__all__ = [
    "DEFAULT_TRACEFS",
    "BatchOutput",
    "DescribeOutput",
    "RunOutput",
    "errno_from_text",
    "forced_append",
    "marked_sections",
    "new_nonce",
    "parse_batch",
    "parse_describe",
    "parse_run",
    "quote",
    "render_batch",
    "render_describe",
    "render_kill",
    "render_run",
    "render_spawn",
    "render_spawn_kill",
    "render_stream",
    "render_stream_kill",
]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

DEFAULT_TRACEFS: tuple[str, ...] = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")

# Above this many bytes a pipe write is no longer atomic, so dd must be told to read a full block.
_PIPE_ATOMIC = 4096


def quote(value: str) -> str:
    """``value`` as one single-quoted sh word: nothing inside is interpreted (``'`` becomes ``'\\''``)."""
    if "\0" in value:
        raise ValueError("a NUL byte cannot be passed through a shell word")
    return "'" + value.replace("'", "'\\''") + "'"


def new_nonce() -> str:
    """A fresh frame marker for one script: 128 random bits, never present in any file."""
    return "KTF" + secrets.token_hex(16)


def forced_append(path: str) -> bool:
    """Probe lists (``kprobe_events``, ``uprobe_events``, ``dynamic_events``, ...) are only ever appended to:
    opening them with O_TRUNC deletes every probe of that kind, including other users' ones."""
    return posixpath.basename(path.rstrip("/")).endswith("_events")


# --- errno names from strerror texts ------------------------------------------------------------------------


def _strerror_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for number, name in sorted(errno.errorcode.items()):
        table.setdefault(os.strerror(number), name)
    # musl libc (busybox-only boards) words some messages differently from glibc
    for text, name in {
        "Resource busy": "EBUSY",
        "Out of memory": "ENOMEM",
        "I/O error": "EIO",
        "No child process": "ECHILD",
        "No error information": "",
        "Not supported": "EOPNOTSUPP",
        "Operation not supported": "EOPNOTSUPP",
        "Device not configured": "ENXIO",
        "Argument list too long": "E2BIG",
        "Resource temporarily unavailable": "EAGAIN",
        "Invalid or incomplete multibyte or wide character": "EILSEQ",
        "Illegal byte sequence": "EILSEQ",
        "Too many open files in system": "ENFILE",
        "No such device": "ENODEV",
    }.items():
        table.setdefault(text, name)
    return table


_STRERROR = _strerror_table()


def errno_from_text(text: str) -> tuple[str, str]:
    """(errno name, strerror) from a tool's error output such as ``dd: error writing 'x': Invalid argument``.

    The first line whose text after some ``": "`` is a known strerror wins; otherwise the errno name is
    ``""`` and the error is the last non-empty line.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        # longest tail first: a few strerror texts contain ": " themselves ("Too many references: cannot splice")
        parts = line.split(": ")
        for start in range(1, len(parts)):
            tail = ": ".join(parts[start:]).strip()
            name = _STRERROR.get(tail)
            if name:
                return name, tail
    return "", (lines[-1] if lines else "")


# --- the shared prelude -------------------------------------------------------------------------------------

# Shell functions of every script. ``kt_f`` prints one frame; ``kt_cd`` enters tracefs or says why it cannot.
_PRELUDE = r"""LC_ALL=C
export LC_ALL
kt_n=@NONCE@
kt_f() { printf '\n%s %s\n' "$kt_n" "$*"; }
kt_cd() {
  for kt_d in @CANDIDATES@; do
    if [ -e "$kt_d/available_events" ] && cd "$kt_d" 2>/dev/null; then kt_f T "$kt_d"; return 0; fi
  done
  for kt_d in @CANDIDATES@; do
    if [ -d "$kt_d" ] && { [ ! -x "$kt_d" ] || [ ! -r "$kt_d" ]; }; then
      kt_f X noaccess "$(id -un 2>/dev/null || id -u)" "$kt_d"; return 1
    fi
    kt_p=${kt_d%/*}
    if [ -n "$kt_p" ] && [ -d "$kt_p" ] && [ ! -x "$kt_p" ]; then
      kt_f X noaccess "$(id -un 2>/dev/null || id -u)" "$kt_p"; return 1
    fi
  done
  kt_f X nomount; return 1
}
"""

_OPS_FUNCS = r"""kt_fb=
kt_w() {
  if [ "$4" = 1 ]; then
    kt_e=$(printf '%s' "$2" | dd $kt_fb of="$1" bs="$3" oflag=append conv=notrunc 2>&1 >/dev/null)
  else
    kt_e=$(printf '%s' "$2" | dd $kt_fb of="$1" bs="$3" 2>&1 >/dev/null)
  fi
  kt_r=$?
}
kt_rd() {
  kt_f B "$3"
  if [ "$2" = 1 ] && [ ! -e "$1" ] && [ ! -L "$1" ]; then kt_r=0; kt_e=; return; fi
  { kt_e=$(cat "$1" 2>&1 >&3 3>&-); kt_r=$?; } 3>&1
}
kt_md() { kt_e=$(mkdir "$1" 2>&1); kt_r=$?; }
kt_rm() { kt_e=$(rmdir "$1" 2>&1); kt_r=$?; }
kt_ul() { kt_e=$(rm -- "$1" 2>&1); kt_r=$?; }
kt_s() { printf '\n%s S %s %s\n%s' "$kt_n" "$1" "$kt_r" "$kt_e"; }
"""

_OCTAL_CHUNK = 16384  # bytes per printf of binary data (a 64 KiB format string)

_FULLBLOCK_PROBE = (
    "if printf ab | dd iflag=fullblock bs=2 of=/dev/null >/dev/null 2>&1; then kt_fb=iflag=fullblock; fi\n"
)


def _prelude(nonce: str, candidates: Sequence[str]) -> str:
    return _PRELUDE.replace("@NONCE@", quote(nonce)).replace("@CANDIDATES@", " ".join(quote(c) for c in candidates))


def _shell_path(path: str) -> str:
    """A tracefs path as the script addresses it: relative to the tracefs root it has cd'ed into."""
    if path.startswith("/"):
        return path
    return "./" + path.lstrip("/")


# --- apply() ------------------------------------------------------------------------------------------------


def _render_ops(ops: Sequence[Op], *, stop_on_error: bool, first_index: int = 0) -> list[str]:
    """The per-op lines (``B i`` + content for reads, ``S i rc`` + error text), already inside tracefs; ``i``
    counts from ``first_index``."""
    out: list[str] = []
    if any(isinstance(op, Write) and len(op.data.encode("utf-8", "surrogateescape")) > _PIPE_ATOMIC for op in ops):
        out.append(_FULLBLOCK_PROBE)
    for index, op in enumerate(ops, first_index):
        path = quote(_shell_path(op.path))
        if isinstance(op, Write):
            size = len(op.data.encode("utf-8", "surrogateescape"))
            append = "1" if (op.append or forced_append(op.path)) else "0"
            out.append(f"kt_w {path} {quote(op.data)} {max(size, 1)} {append}\n")
        elif isinstance(op, Read):
            out.append(f"kt_rd {path} {'1' if op.missing_ok else '0'} {index}\n")
        elif isinstance(op, Mkdir):
            out.append(f"kt_md {path}\n")
        elif isinstance(op, Rmdir):
            out.append(f"kt_rm {path}\n")
        elif isinstance(op, Remove):
            out.append(f"kt_ul {path}\n")
        else:  # pragma: no cover - guarded by the Op union
            raise TypeError(f"not a tracefs operation: {op!r}")
        out.append(f"kt_s {index}\n")
        if stop_on_error:
            out.append('[ "$kt_r" = 0 ] || { kt_f END; exit 0; }\n')
    return out


def render_batch(
    ops: Sequence[Op], nonce: str, *, candidates: Sequence[str] = DEFAULT_TRACEFS, stop_on_error: bool = False
) -> str:
    """One script applying ``ops`` in order inside tracefs. Frames: ``T root`` (or ``X reason``), then per op
    ``B i`` + content (reads only) and ``S i rc`` + error text, then ``END``."""
    out = [_prelude(nonce, candidates), _OPS_FUNCS, "kt_f START\n", "kt_cd || { kt_f END; exit 0; }\n"]
    out.extend(_render_ops(ops, stop_on_error=stop_on_error))
    out.append("kt_f END\n")
    return "".join(out)


@dataclass
class Frame:
    tag: str
    fields: list[str]
    payload: bytes


def split_frames(output: bytes, nonce: str) -> list[Frame]:
    """The frames of a script's stdout (text before the first frame, e.g. a login banner, is dropped)."""
    marker = b"\n" + nonce.encode() + b" "
    frames: list[Frame] = []
    for chunk in output.split(marker)[1:]:
        head, _, payload = chunk.partition(b"\n")
        parts = head.decode("utf-8", "surrogateescape").split(" ")
        frames.append(Frame(parts[0], parts[1:], payload))
    return frames


@dataclass
class TracefsProblem:
    """Why a script could not enter tracefs: ``nomount``, or ``noaccess`` (``user`` may not enter ``path``)."""

    reason: str
    user: str = ""
    path: str = ""


def _tracefs_frames(frames: Sequence[Frame]) -> tuple[Optional[str], Optional[TracefsProblem]]:
    for frame in frames:
        if frame.tag == "T":
            return " ".join(frame.fields), None
        if frame.tag == "X" and frame.fields:
            reason = frame.fields[0]
            user = frame.fields[1] if len(frame.fields) > 1 else ""
            return None, TracefsProblem(reason, user, " ".join(frame.fields[2:]))
    return None, None


@dataclass
class BatchOutput:
    started: bool
    complete: bool
    tracefs: Optional[str]
    problem: Optional[TracefsProblem]
    results: list[OpResult] = field(default_factory=list)


def decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def parse_batch(ops: Sequence[Op], output: bytes, nonce: str) -> BatchOutput:
    """Results of :func:`render_batch`'s script, in op order (fewer than ``ops`` after a stop_on_error stop)."""
    frames = split_frames(output, nonce)
    tracefs, problem = _tracefs_frames(frames)
    result = BatchOutput(
        started=any(f.tag == "START" for f in frames),
        complete=any(f.tag == "END" for f in frames),
        tracefs=tracefs,
        problem=problem,
    )
    result.results = op_results(ops, frames)
    return result


def op_results(ops: Sequence[Op], frames: Sequence[Frame]) -> list[OpResult]:
    """The results of the ops whose ``B``/``S`` frames are among ``frames``, in op order."""
    content: dict[int, bytes] = {}
    results: list[OpResult] = []
    for frame in frames:
        if frame.tag == "B":
            content[int(frame.fields[0])] = frame.payload
        elif frame.tag == "S":
            index, rc = int(frame.fields[0]), int(frame.fields[1])
            op = ops[index]
            if rc == 0:
                results.append(OpResult(op, ok=True, data=decode(content.get(index, b""))))
            else:
                name, text = errno_from_text(decode(frame.payload))
                results.append(OpResult(op, ok=False, errno_name=name, error=text))
    return results


# --- describe() ---------------------------------------------------------------------------------------------


def render_describe(nonce: str, feature_paths: Sequence[str], candidates: Sequence[str] = DEFAULT_TRACEFS) -> str:
    """Kernel release (``K``), machine (``M``), user (``W uid name``), tracefs (``T``/``X``), permissions
    (``P r``/``P w``), which of ``feature_paths`` exist (``E path``) and the README (``R`` + payload)."""
    checks = "".join(f"[ -e {quote(p)} ] && kt_f E {quote(p)}\n" for p in feature_paths)
    return (
        _prelude(nonce, candidates)
        + "kt_f START\n"
        + 'kt_f K "$(uname -r)"\n'
        + 'kt_f M "$(uname -m)"\n'
        + 'kt_f W "$(id -u)" "$(id -un 2>/dev/null)"\n'
        + "if kt_cd; then\n"
        + "[ -r available_events ] && kt_f P r\n"
        + "for kt_c in dynamic_events kprobe_events uprobe_events set_event; do\n"
        + '  if [ -e "$kt_c" ]; then [ -w "$kt_c" ] && kt_f P w; break; fi\n'
        + "done\n"
        + checks
        + "kt_f R\ncat README 2>/dev/null\n"
        + "fi\n"
        + "kt_f END\n"
    )


@dataclass
class DescribeOutput:
    started: bool
    complete: bool
    release: str
    arch: str
    uid: str
    user: str
    tracefs: Optional[str]
    problem: Optional[TracefsProblem]
    readable: bool
    writable: bool
    present: set[str]
    readme: str


def parse_describe(output: bytes, nonce: str) -> DescribeOutput:
    frames = split_frames(output, nonce)
    tracefs, problem = _tracefs_frames(frames)
    info = DescribeOutput(
        started=any(f.tag == "START" for f in frames),
        complete=any(f.tag == "END" for f in frames),
        release="",
        arch="",
        uid="",
        user="",
        tracefs=tracefs,
        problem=problem,
        readable=False,
        writable=False,
        present=set(),
        readme="",
    )
    for frame in frames:
        text = " ".join(frame.fields)
        if frame.tag == "K":
            info.release = text
        elif frame.tag == "M":
            info.arch = text
        elif frame.tag == "W":
            info.uid = frame.fields[0] if frame.fields else ""
            info.user = " ".join(frame.fields[1:])
        elif frame.tag == "P":
            info.readable |= text == "r"
            info.writable |= text == "w"
        elif frame.tag == "E":
            info.present.add(text)
        elif frame.tag == "R":
            info.readme = decode(frame.payload)
    return info


# --- run() --------------------------------------------------------------------------------------------------

# Runs as the child: $$ is the pid the command will have. Appends it to each pid file (one write each), announces
# it (P frame) and execs the command. Arguments: nonce, stdin file (or ""), tracefs root, count, pid files, argv.
_INNER = r"""kt_n=$1; kt_in=$2; kt_t=$3; kt_c=$4; kt_h=$PWD; shift 4
[ -n "$kt_in" ] && rm -f "$kt_in"
while [ "$kt_c" -gt 0 ]; do
  case $1 in /*) kt_o=$1;; *) kt_o=$kt_t/$1;; esac
  kt_e=$(printf '%s' "$$" | dd of="$kt_o" bs=32 oflag=append conv=notrunc 2>&1 >/dev/null) || {
    printf '\n%s F %s\n%s' "$kt_n" "$1" "$kt_e"; exit 125; }
  shift; kt_c=$((kt_c - 1))
done
printf '\n%s P %s\n' "$kt_n" "$$"
exec "$@"
"""


# The command's stdin, in a new file (0600, never an existing one: set -C) of $TMPDIR or /tmp that the child
# removes once it has it open. Written by cat, not the printf builtin: dash's printf reports a full disk as
# "I/O error" and busybox's reports nothing, while cat (GNU and busybox) says "No space left on device". A failed
# write removes the part already written; either failure is an ``I path`` frame with the error text as payload.
_STDIN_FILE = r"""kt_in="${TMPDIR:-/tmp}/.ktrace-stdin.$$.$kt_n"
if ! kt_e=$( (umask 077; set -C; : >"$kt_in") 2>&1 ); then
  kt_f I "$kt_in"; printf '%s' "$kt_e"; kt_f END; exit 0
fi
if ! kt_e=$(@DATA@ | cat 2>&1 >>"$kt_in"); then
  rm -f "$kt_in"; kt_f I "$kt_in"; printf '%s' "$kt_e"; kt_f END; exit 0
fi
"""


def producer(data: Union[str, bytes]) -> str:
    """A shell command that prints ``data`` exactly: text through ``printf '%s'``; bytes (any byte, NUL too) as
    octal escapes in ``printf`` formats, which POSIX sh, dash and busybox ash all expand, in chunks."""
    if isinstance(data, str):
        return f"printf '%s' {quote(data)}"
    if not data:
        return ":"
    chunks = [
        "printf '" + "".join(f"\\{byte:03o}" for byte in data[start : start + _OCTAL_CHUNK]) + "'"
        for start in range(0, len(data), _OCTAL_CHUNK)
    ]
    return "{ " + "; ".join(chunks) + "; }"


def _command_head(
    nonce: str,
    candidates: Sequence[str],
    *,
    pid_files: Sequence[str],
    stdin: Optional[Union[str, bytes]],
    require: str = "",
) -> list[str]:
    """The start shared by run and spawn scripts: the ``START`` frame, then ``require`` (a check that may end the
    script), then ``kt_t`` (the tracefs root, only when pid files are written) and ``kt_in`` (the stdin file)."""
    out = [_prelude(nonce, candidates), "kt_f START\n", "kt_t=\n", require]
    if pid_files:
        out.append('kt_h=$PWD\nkt_cd || { kt_f END; exit 0; }\nkt_t=$PWD\ncd "$kt_h" || exit 1\n')
    if stdin is not None:
        out.append(_STDIN_FILE.replace("@DATA@", producer(stdin)))
    else:
        out.append("kt_in=\n")
    return out


def _render_unchanged(files: Sequence[tuple[str, str]]) -> list[str]:
    """Each file's ``stat -L`` size, mtime and inode compared with what it was; the first that differs ends the
    script (``M i``)."""
    return [
        f"[ \"$(stat -L -c '%s %Y %i' -- {quote(path)} 2>/dev/null)\" = {quote(identity)} ] || "
        f"{{ kt_f M {index}; kt_f END; exit 0; }}\n"
        for index, (path, identity) in enumerate(files)
    ]


def render_run(
    argv: Sequence[str],
    nonce: str,
    *,
    pid_files: Sequence[str] = (),
    stdin: Optional[Union[str, bytes]] = None,
    candidates: Sequence[str] = DEFAULT_TRACEFS,
    after: Sequence[Op] = (),
    before: Sequence[Op] = (),
    settle: Sequence[Op] = (),
    unchanged: Sequence[tuple[str, str]] = (),
) -> str:
    """A script that runs ``argv`` (no shell interpretation) in its own session (``setsid`` when the target has
    it), with ``stdin`` as its standard input (else /dev/null), in the login directory; then applies ``after``
    inside tracefs (frames as in :func:`render_batch`), so reading the trace costs no extra round trip.
    ``before`` is applied first, inside tracefs, stopping at the first failure, and then nothing else runs
    (arming travels with the command). ``settle`` comes before ``before``, applied whatever its results (work
    left by an earlier test). Ops are numbered in that order: ``settle``'s, ``before``'s, ``after``'s. First of
    all, each file of ``unchanged`` (path, ``"size mtime inode"``) must still be as it was: one that is not is an
    ``M i`` frame (its index), and then nothing is applied or run.

    Frames: ``START``; ``T``/``X`` when there are pid files; ``I file`` + error when the stdin file could not be
    written (nothing is left of it; the command is not run); ``C pid`` as soon as the child exists (the pid to
    kill on timeout); ``P pid`` from the child right before exec; ``F file`` + error when a pid file refused the
    pid; ``R rc`` when it ended; ``END``. The command's stdout is the payloads of ``C`` and ``P`` in order."""
    if not argv:
        raise ValueError("run() needs a command")
    prepare = ""
    if before or settle or unchanged:
        prepare = "".join(
            [
                *_render_unchanged(unchanged),
                _OPS_FUNCS,
                "kt_h0=$PWD\nkt_cd || { kt_f END; exit 0; }\n",
                *_render_ops(settle, stop_on_error=False),
                *_render_ops(before, stop_on_error=True, first_index=len(settle)),
                'cd "$kt_h0" || exit 1\n',
            ]
        )
    out = _command_head(nonce, candidates, pid_files=pid_files, stdin=stdin, require=prepare)
    words = " ".join(quote(a) for a in (*pid_files, *argv))
    call = f'sh -c {quote(_INNER)} ktrace "$kt_n" "$kt_in" "$kt_t" {len(pid_files)} {words} <"${{kt_in:-/dev/null}}"'
    out.append(f"if command -v setsid >/dev/null 2>&1; then\n  setsid {call} &\nelse\n  {call} &\nfi\n")
    out.append('kt_p=$!\nkt_f C "$kt_p"\nwait "$kt_p"\nkt_f R "$?"\n')
    if after:
        out.append(_OPS_FUNCS)
        out.append("kt_cd || { kt_f END; exit 0; }\n")
        out.extend(_render_ops(after, stop_on_error=False, first_index=len(settle) + len(before)))
    out.append("kt_f END\n")
    return "".join(out)


# A command in the background (spawn): like _INNER, but the command is looked up first (a missing one is an
# ``N`` frame, before any pid file is written), and its environment carries the script's nonce as a marker, so that
# what it leaves (its children) can be told from any other process, even after the script is gone. Arguments:
# nonce, stdin file (or ""), tracefs root, count, command name, pid files, argv.
_SPAWN_INNER = r"""kt_n=$1; kt_in=$2; kt_t=$3; kt_c=$4; kt_x=$5; shift 5
[ -n "$kt_in" ] && rm -f "$kt_in"
case $kt_x in
  */*) [ -f "$kt_x" ] && [ -x "$kt_x" ] ;;
  *) command -v "$kt_x" >/dev/null 2>&1 ;;
esac || { printf '\n%s N\n' "$kt_n"; exit 127; }
while [ "$kt_c" -gt 0 ]; do
  case $1 in /*) kt_o=$1;; *) kt_o=$kt_t/$1;; esac
  kt_e=$(printf '%s' "$$" | dd of="$kt_o" bs=32 oflag=append conv=notrunc 2>&1 >/dev/null) || {
    printf '\n%s F %s\n%s' "$kt_n" "$1" "$kt_e"; exit 125; }
  shift; kt_c=$((kt_c - 1))
done
KTRACE_SPAWN=$kt_n
export KTRACE_SPAWN
printf '\n%s P %s\n' "$kt_n" "$$"
exec "$@"
"""


def render_spawn(
    argv: Sequence[str],
    nonce: str,
    *,
    pid_files: Sequence[str] = (),
    stdin: Optional[Union[str, bytes]] = None,
    candidates: Sequence[str] = DEFAULT_TRACEFS,
) -> str:
    """A script that starts ``argv`` in a session of its own (``setsid``, required: a ``Z`` frame says it is
    missing) and waits for it: frames as :func:`render_run`'s (``P pid`` once it execs, ``R rc`` and ``END`` when
    it has ended) plus ``N`` when there is no such command to run (nothing is written, nothing runs). Its
    environment holds ``KTRACE_SPAWN=<nonce>``, which :func:`render_spawn_kill` looks for."""
    if not argv:
        raise ValueError("spawn() needs a command")
    out = _command_head(
        nonce,
        candidates,
        pid_files=pid_files,
        stdin=stdin,
        require="command -v setsid >/dev/null 2>&1 || { kt_f Z; kt_f END; exit 0; }\n",
    )
    words = " ".join(quote(a) for a in (argv[0], *pid_files, *argv))
    call = f'sh -c {quote(_SPAWN_INNER)} ktrace "$kt_n" "$kt_in" "$kt_t" {len(pid_files)} {words}'
    out.append(f'setsid {call} <"${{kt_in:-/dev/null}}" &\n')
    out.append('kt_p=$!\nkt_f C "$kt_p"\nwait "$kt_p"\nkt_f R "$?"\nkt_f END\n')
    return "".join(out)


# Ends what is left of a spawned command's process group. A process counts as one of it when it is alive in that
# group and carries the command's marker in its environment, or is the group's leader while the spawning script
# has not reaped it yet (its pid cannot have been reused then). Prints TERM / KILL for the signals it sent and
# ALIVE when something survived SIGKILL.
_SPAWN_KILL = r"""kt_live() {
  for kt_d in /proc/[0-9]*; do
    read -r kt_s 2>/dev/null <"$kt_d/stat" || continue
    kt_s=${kt_s##*) }
    set -- $kt_s
    [ "$3" = "$kt_g" ] || continue
    case $1 in Z|X) continue ;; esac
    if [ "$kt_l" = 1 ] && [ "$kt_d" = "/proc/$kt_g" ]; then return 0; fi
    tr '\000' '\n' 2>/dev/null <"$kt_d/environ" | grep -qxF "$kt_m" && return 0
  done
  return 1
}
kt_gone() {
  kt_i=0
  while kt_live; do
    [ "$kt_i" -ge "$1" ] && return 1
    sleep 0.05 2>/dev/null || sleep 1
    kt_i=$((kt_i + 1))
  done
  return 0
}
if kt_live; then
  echo TERM
  kill -TERM -"$kt_g" 2>/dev/null
  if ! kt_gone "$kt_steps"; then
    echo KILL
    kill -KILL -"$kt_g" 2>/dev/null
    kt_gone 100 || echo ALIVE
  fi
fi
exit 0
"""


def render_spawn_kill(pgid: int, nonce: str, *, grace: float, leader_unreaped: bool) -> str:
    """End the process group ``pgid`` of the command :func:`render_spawn` started with ``nonce``: SIGTERM, then
    SIGKILL to what is left after ``grace`` seconds; only while a process of it is there (see ``_SPAWN_KILL``).
    ``leader_unreaped``: the spawning script has not reported its end, so the leader's pid is still its own."""
    if pgid <= 1:
        raise ValueError(f"refusing to signal process group {pgid}")
    steps = max(1, int(grace / 0.05 + 0.999))
    return (
        f"kt_g={pgid}\nkt_m={quote('KTRACE_SPAWN=' + nonce)}\nkt_l={1 if leader_unreaped else 0}\n"
        f"kt_steps={steps}\n" + _SPAWN_KILL
    )


@dataclass
class RunOutput:
    started: bool
    complete: bool
    child: Optional[int]
    pid: Optional[int]
    returncode: Optional[int]
    stdout: bytes
    problem: Optional[TracefsProblem]
    pid_file_error: Optional[tuple[str, str]]
    after: list[OpResult] = field(default_factory=list)
    before: list[OpResult] = field(default_factory=list)  # run: what was applied before the command
    settled: list[OpResult] = field(default_factory=list)  # run: what was applied first, whatever its results
    changed: list[int] = field(default_factory=list)  # run: the ``unchanged`` files that were not (indexes)
    stdin_error: Optional[tuple[str, str]] = None  # (stdin file path, the shell's error text)
    not_found: bool = False  # spawn: no such command
    no_setsid: bool = False  # spawn: the target has no setsid


def parse_run(
    output: bytes, nonce: str, after: Sequence[Op] = (), before: Sequence[Op] = (), settle: Sequence[Op] = ()
) -> RunOutput:
    """What :func:`render_run`'s script said so far (it may be parsed while still running)."""
    frames = split_frames(output, nonce)
    _, problem = _tracefs_frames(frames)
    result = RunOutput(
        started=any(f.tag == "START" for f in frames),
        complete=any(f.tag == "END" for f in frames),
        child=None,
        pid=None,
        returncode=None,
        stdout=b"",
        problem=problem,
        pid_file_error=None,
    )
    stdout: list[bytes] = []
    for frame in frames:
        if frame.tag == "C":
            result.child = int(frame.fields[0])
            stdout.append(frame.payload)
        elif frame.tag == "P":
            result.pid = int(frame.fields[0])
            stdout.append(frame.payload)
        elif frame.tag == "R":
            result.returncode = int(frame.fields[0])
        elif frame.tag == "F":
            result.pid_file_error = (" ".join(frame.fields), decode(frame.payload))
        elif frame.tag == "I":
            result.stdin_error = (" ".join(frame.fields), decode(frame.payload))
        elif frame.tag == "N":
            result.not_found = True
        elif frame.tag == "Z":
            result.no_setsid = True
        elif frame.tag == "M":
            result.changed.append(int(frame.fields[0]))
    result.stdout = b"".join(stdout)
    applied = op_results([*settle, *before, *after], frames)
    indexes = [int(f.fields[0]) for f in frames if f.tag == "S"]
    settled = sum(1 for index in indexes if index < len(settle))
    prepared = settled + sum(1 for index in indexes if len(settle) <= index < len(settle) + len(before))
    result.settled, result.before, result.after = applied[:settled], applied[settled:prepared], applied[prepared:]
    return result


def render_kill(pid: int) -> str:
    """Kill the process group led by ``pid`` (the command's session under setsid) and ``pid`` itself."""
    if pid <= 1:
        raise ValueError(f"refusing to kill pid {pid}")
    # no "--": dash's kill builtin takes "-PID" after a signal but rejects "--"
    return f"kill -KILL -{pid} 2>/dev/null; kill -KILL {pid} 2>/dev/null; exit 0\n"


def render_stream(path: str) -> str:
    """A command line (for ``sh -c``) that prints its pid, then becomes ``dd`` copying ``path`` (absolute, an
    instance's ``trace_pipe``) to stdout as it arrives. ``dd`` and not ``cat``: busybox ``cat`` copies with
    sendfile(), which on trace_pipe blocks the whole stream; ``dd bs=65536`` writes each read as it returns."""
    if not path.startswith("/"):
        raise ValueError(f"stream path {path!r} must be absolute")
    return f"[ -r {quote(path)} ] || exit 98; echo $$; exec dd if={quote(path)} bs=65536 2>/dev/null"


def render_stream_kill(readers: Sequence[tuple[int, str]], *, signal: str = "TERM") -> str:
    """End the stream readers ``(pid, path)`` of :func:`render_stream`: each only if that pid still is a reader
    of that very path (never a process that reused the pid). Prints ``ALIVE pid`` for each one still there."""
    if signal not in ("TERM", "KILL"):
        raise ValueError(f"signal {signal!r}")
    out = []
    checks = []
    for pid, path in readers:
        if pid <= 1:
            raise ValueError(f"refusing to kill pid {pid}")
        # NULs to spaces first: busybox grep stops reading a line at a NUL. Under busybox ash, `exec dd` may
        # run the applet in the shell's own process, whose cmdline stays the `sh -c` line (the path is in both)
        mine = f"tr '\\000' ' ' </proc/{pid}/cmdline 2>/dev/null | grep -qF -e {quote(path)}"
        out.append(f"if {mine}; then kill -{signal} {pid} 2>/dev/null; fi\n")
        checks.append(f"if {mine}; then echo ALIVE {pid}; fi\n")
    out.append("sleep 0.1 2>/dev/null || sleep 1\n")
    out.extend(checks)
    out.append("exit 0\n")
    return "".join(out)


_SUDO_PROMPT = re.compile(r"a password is required|a terminal is required|askpass", re.IGNORECASE)


def marked_sections(stdout: str, nonce: str) -> dict[str, str]:
    """The output of a script that starts each part with a line ``@@ktrace-<nonce> <label>``: label -> the lines
    up to the next marker (what came before the first marker is dropped)."""
    mark = f"@@ktrace-{nonce} "
    sections: dict[str, list[str]] = {}
    current: Optional[list[str]] = None
    for line in stdout.splitlines(keepends=True):
        if line.startswith(mark):
            current = sections.setdefault(line[len(mark) :].strip(), [])
        elif current is not None:
            current.append(line)
    return {key: "".join(value) for key, value in sections.items()}


def sudo_needs_password(stderr: str) -> bool:
    """Whether ``sudo -n`` refused because it would have asked for a password."""
    return bool(_SUDO_PROMPT.search(stderr))
