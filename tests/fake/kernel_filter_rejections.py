"""Filters a 6.18 kernel refuses on ``sched_process_exec`` (fields ``filename``, ``pid``, ``old_pid``), with the errno
and the text its ``filter`` file shows after the failed write, as read back from that kernel (two possible CPUs).
test_filters.py checks the fake's predictions against these texts; test_filters_differential.py writes every one of
them to the running kernel and compares it with the fake's prediction for that machine."""

from __future__ import annotations

from typing import Union

KERNEL_REJECTIONS: list[tuple[Union[str, bytes], str, str]] = [
    # expression, errno, filter file text after the failed write
    ("nosuch == 1", "EINVAL", "nosuch == 1\n       ^\nparse_error: Field not found\n\n"),
    ("pid = 1", "EINVAL", "pid = 1\n     ^\nparse_error: Invalid operator\n\n"),
    ("== 1", "EPERM", "== 1\nError: (0)\n\n"),
    ("()", "EINVAL", "()\nError: (0)\n\n"),
    ("(!)", "EPERM", "(!)\nError: (0)\n\n"),
    (" ", "EINVAL", "\nError: (0)\n\n"),
    ("!", "EINVAL", "!\n ^\nparse_error: No filter found\n\n"),
    ("(pid == 1", "ENOENT", "(pid == 1\n^\nparse_error: Too many '('\n\n"),
    ("pid == 1)", "EPERM", "pid == 1)\n        ^\nparse_error: Too few '('\n\n"),
    ('filename == "x', "ESRCH", 'filename == "x\n            ^\nparse_error: Missing matching quote\n\n'),
    (
        "pid == 1 pid == 2",
        "EPERM",
        "pid == 1 pid == 2\n         ^\nparse_error: Too many terms in predicate expression\n\n",
    ),
    ("common_type == -1", "EINVAL", "common_type == -1\n                ^\nparse_error: Illegal integer value\n\n"),
    ("pid == 08", "EINVAL", "pid == 08\n        ^\nparse_error: Illegal integer value\n\n"),
    ("pid == 0x", "EINVAL", "pid == 0x\n        ^\nparse_error: Illegal integer value\n\n"),
    (
        "pid == 9223372036854775808",
        "EINVAL",
        "pid == 9223372036854775808\n        ^\nparse_error: Illegal integer value\n\n",
    ),
    (
        "pid == 123456789012345678901234",
        "EINVAL",
        "pid == 123456789012345678901234\n                               ^\nparse_error: Operand too long\n\n",
    ),
    (
        "filename == foo",
        "EINVAL",
        "filename == foo\n             ^\nparse_error: Invalid value (did you forget quotes)?\n\n",
    ),
    ('filename < "x"', "EINVAL", 'filename < "x"\n            ^\nparse_error: Illegal operation for field type\n\n'),
    ('pid == "x"', "EINVAL", 'pid == "x"\n        ^\nparse_error: Expecting numeric field\n\n'),
    ("pid ~ 1", "EINVAL", "pid ~ 1\n       ^\nparse_error: Illegal operation for field type\n\n"),
    ("filename == 1", "EINVAL", "filename == 1\n             ^\nparse_error: Expecting string field\n\n"),
    ("CPU & CPUS{}", "EINVAL", "CPU & CPUS{}\n            ^\nparse_error: Invalid cpulist\n\n"),
    ("CPU & CPUS{5}", "EINVAL", "CPU & CPUS{5}\n             ^\nparse_error: Invalid cpulist\n\n"),
    ("CPU & CPUS 0}", "EINVAL", "CPU & CPUS 0}\n            ^\nparse_error: Missing '{'\n\n"),
    ("CPU & CPUS{0", "EINVAL", "CPU & CPUS{0\n            ^\nparse_error: Missing '}'\n\n"),
    ("CPU < CPUS{0}", "EINVAL", "CPU < CPUS{0}\n       ^\nparse_error: Illegal operation for field type\n\n"),
    ('common_comm == "x"', "EINVAL", 'common_comm == "x"\n            ^\nparse_error: Field not found\n\n'),
    (b"pid\xc3 == 1", "EINVAL", "pid\udcc3 == 1\n     ^\nparse_error: Field not found\n\n"),
]
