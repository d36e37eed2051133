"""Module parameters as the kernel's parser reads them, and load_module()'s refusals before anything reaches the
target (loading itself is tested in the qemu guests: tests/guests/test_modules_guest.py)."""

from __future__ import annotations

import pytest

from pytest_ktrace._errors import KtraceError
from pytest_ktrace._modules import UNLOAD_SCRIPT, module_name, module_params


def test_parameters_are_written_as_the_kernel_parses_them() -> None:
    assert module_params({"irq": 30, "debug": True, "quiet": False}) == ["irq=30", "debug=1", "quiet=0"]
    assert module_params({"name": "two words", "empty": "", "plain": "eth0"}) == [
        'name="two words"',
        'empty=""',
        "plain=eth0",
    ]
    assert module_params({"ports": [1, 2, 3], "flags": (True, False)}) == ["ports=1,2,3", "flags=1,0"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"name": 'say "hi"'}, "double quote"),
        ({"name": "two\nlines"}, "newline"),
        ({"ports": ["a b"]}, "array item"),
        ({"ports": []}, "non-empty list"),
        ({"ratio": 1.5}, "an int, a bool, a str"),
        ({"bad-name": 1}, "not a module parameter name"),
    ],
)
def test_parameters_the_kernel_cannot_take_are_refused(params: dict[str, object], message: str) -> None:
    with pytest.raises(KtraceError, match=message):
        module_params(params)


def test_a_file_that_is_no_module_is_named() -> None:
    with pytest.raises(KtraceError, match="not a kernel module"):
        module_name(b"not an ELF file", "broken.ko")


def test_the_unload_script_is_posix_sh() -> None:
    import shutil
    import subprocess

    for shell in ("dash", "busybox"):
        if shutil.which(shell):
            argv = [shell, "-n"] if shell == "dash" else [shell, "sh", "-n"]
            assert subprocess.run([*argv, "-c", UNLOAD_SCRIPT], check=False).returncode == 0


LOAD_SUITE = """
import pytest, pytest_ktrace

@pytest.mark.parametrize("module, message", [
    ("no/such/file.ko", "not a file here"),
    ("bad name!", "neither a local .ko file nor a module name"),
])
def test_refused(ktrace, module, message):
    with pytest.raises(pytest_ktrace.KtraceError, match=message):
        ktrace.load_module(module)

def test_a_file_that_is_no_module(ktrace, tmp_path):
    fake = tmp_path / "fake.ko"
    fake.write_bytes(b"nothing")
    with pytest.raises(pytest_ktrace.KtraceError, match="not a kernel module"):
        ktrace.load_module(fake)
"""


def test_load_module_refusals_name_the_argument(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_loading=LOAD_SUITE)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)
