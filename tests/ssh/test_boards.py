"""--ktrace-host=board1,board2: xdist workers spread over several boards, one test per board at a time."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from ktrace_testing import left_behind, tracefs_state
from pytest_ktrace._boards import lease_board, split_hosts

pytest_plugins = ["pytester"]


def test_split_hosts() -> None:
    assert split_hosts("a, b,c") == ("a", "b", "c")
    from pytest_ktrace import KtraceError

    with pytest.raises(KtraceError, match="empty board name"):
        split_hosts("a,,b")


def test_a_board_is_held_by_one_lease_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRACE_LOCK_DIR", str(tmp_path))
    first = lease_board(["b1", "b2"], timeout=1)
    second = lease_board(["b1", "b2"], timeout=1)
    assert {first.host, second.host} == {"b1", "b2"}
    from pytest_ktrace import KtraceError

    with pytest.raises(KtraceError, match="no board of b1, b2 became free within 0 s"):
        lease_board(["b1", "b2"], timeout=0.2)
    first.release()
    assert lease_board(["b1", "b2"], timeout=1).host == first.host


def test_workers_spread_over_boards_without_sharing_one(sshd_server, pytester: pytest.Pytester, probed: Path) -> None:
    pytest.importorskip("xdist")
    text = Path(sshd_server.ssh_config).read_text()
    block = text.split("Host ktrace-test\n", 1)[1].split("\nHost ", 1)[0]
    config = pytester.path / "ssh_config"
    config.write_text(f"Host board-a\n{block}\nHost board-b\n{block}\n")
    log = pytester.path / "leases.log"
    pytester.makepyfile(
        test_pool=f"""
        import os, time
        import pytest

        @pytest.mark.parametrize("n", range(8))
        def test_on_some_board(ktrace, n):
            start = time.monotonic()
            probe = ktrace.uprobe({str(probed)!r}, "fib")
            ktrace.run([{str(probed)!r}, "fib", "2"])
            probe.assert_call_count(3)
            time.sleep(0.3)
            with open({str(log)!r}, "a") as out:
                out.write(f"{{ktrace.backend.name}} {{start}} {{time.monotonic()}} {{os.getpid()}}\\n")
        """
    )
    result = pytester.runpytest_subprocess(
        "-n",
        "3",
        "-p",
        "xdist",
        "--ktrace-host=board-a,board-b",
        f"--ktrace-ssh-config={config}",
        "--ktrace-scope=run",
    )
    result.assert_outcomes(passed=8)
    spans: dict[str, list[tuple[float, float]]] = {}
    workers = set()
    for line in log.read_text().splitlines():
        board, start, end, pid = line.split()
        spans.setdefault(board, []).append((float(start), float(end)))
        workers.add(pid)
    assert set(spans) == {"board-a", "board-b"}, spans
    assert len(workers) == 3
    for board, intervals in spans.items():
        for (a_start, a_end), (b_start, b_end) in itertools.combinations(sorted(intervals), 2):
            assert a_end <= b_start or b_end <= a_start, f"two tests overlapped on {board}"
    assert left_behind(tracefs_state()) == []
