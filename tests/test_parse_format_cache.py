"""parse_format() remembers the parse of what follows a format file's name: and ID: lines: the events of one
layout (each test's own probes, named and numbered anew) must read exactly as the full parse reads them."""

from __future__ import annotations

import pytest

from pytest_ktrace import _formats as formats_mod
from pytest_ktrace._errors import KtraceError
from pytest_ktrace._formats import parse_format

BODY = """format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned long __probe_ip;\toffset:8;\tsize:8;\tsigned:0;
\tfield:u32 irq;\toffset:16;\tsize:4;\tsigned:0;
\tfield:__data_loc char[] name;\toffset:20;\tsize:4;\tsigned:1;

print fmt: "(%lx) irq=%u name=\\"%s\\"", REC->__probe_ip, REC->irq, __get_str(name)
"""


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    formats_mod._FORMATS.clear()


@pytest.mark.parametrize("system", ["ktrace_a", "ktrace_b"])
def test_each_event_of_a_layout_reads_as_its_full_parse(system: str) -> None:
    texts = [f"name: p_setup_{serial}\nID: {1500 + serial}\n{BODY}" for serial in range(4)]
    cached = [parse_format(text, system) for text in texts]
    assert len(formats_mod._FORMATS) == 1
    assert cached == [formats_mod._parse_format(text, system) for text in texts]
    assert [(fmt.name, fmt.id, fmt.system) for fmt in cached] == [
        (f"p_setup_{serial}", 1500 + serial, system) for serial in range(4)
    ]


def test_the_system_is_part_of_the_key() -> None:
    first = parse_format(f"name: e\nID: 7\n{BODY}", "one")
    second = parse_format(f"name: e\nID: 7\n{BODY}", "two")
    assert (first.system, second.system) == ("one", "two")
    assert len(formats_mod._FORMATS) == 2


def test_a_later_name_line_is_not_taken_from_the_cache() -> None:
    # the last name: line names the event; such a text is parsed in full every time
    text = f"name: first\nID: 3\nname: second\n{BODY}"
    assert parse_format(text, "s").name == "second"
    assert parse_format(text.replace("first", "other"), "s").name == "second"
    assert not formats_mod._FORMATS


@pytest.mark.parametrize(
    ("head", "message"),
    [("name: a b\nID: 3\n", "bad event name"), ("name: e\nID: x3\n", "ID is not a number")],
)
def test_a_bad_head_after_a_good_one_is_still_refused(head: str, message: str) -> None:
    parse_format(f"name: e\nID: 3\n{BODY}", "s")
    with pytest.raises(KtraceError, match=message):
        parse_format(head + BODY, "s")


def test_a_bad_body_is_refused_every_time() -> None:
    text = f"name: e\nID: 3\n{BODY}".replace("offset:16;", "offset:x;")
    for _ in range(2):
        with pytest.raises(KtraceError, match="malformed field line"):
            parse_format(text, "s")
    assert not formats_mod._FORMATS


def test_the_cache_stays_bounded() -> None:
    for index in range(formats_mod._FORMATS_KEPT + 10):
        fmt = parse_format(f"name: e{index}\nID: {index}\n{BODY}".replace("print fmt: ", f"print fmt: {index} "), "s")
        assert fmt.print_fmt.startswith(f"{index} ")
    assert len(formats_mod._FORMATS) <= formats_mod._FORMATS_KEPT
