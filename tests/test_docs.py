"""The examples of the docs site (``docs/**/*.md``) and of ``README.md`` run as tests, so the docs cannot rot; and
the reference pages name every option, ini key, marker argument, fixture, command, public name and error the
plugin has, so the reference cannot fall behind.

How a page marks its examples (the convention every page follows):

* A fenced block ```` ```python title="test_NAME.py" ```` is a complete test module (the title may have
  directories: ``title="arm64/test_NAME.py"``). Each one runs with ``pytester`` in a fresh directory on the fake
  backend: ``--ktrace-backend=fake --ktrace-snapshot=debian-6.12-x86_64 -p no:cacheprovider``.
* Any other fenced block whose title is a file name (``conftest.py``, ``ports.c``, ``pytest.ini``) is a file of
  the page's example project, written next to each test module of that page. A file shown more than once on a page
  is used in its last version above the test module (else its first one below).
* An HTML comment on the line above a test module, invisible on the rendered page, states what the page claims
  about its run: ``<!-- doc-test: passed=1 failed=1 -->`` takes the keywords of ``RunResult.assert_outcomes``;
  ``backend=local`` runs it on this machine's tracefs instead of the fake (root, as for the rest of the suite);
  ``args="-rs --ktrace-strict"`` adds pytest arguments. Without the comment the claim is that every ``test_*``
  function of the module passes.
* A fenced block titled ``output of test_NAME.py`` shows what the run of that module prints: each of its
  non-blank lines must appear in pytest's output, in that order (leading blanks do not count; ``...`` stands for
  any text).
"""

from __future__ import annotations

import ast
import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]
FAKE = ("--ktrace-backend=fake", "--ktrace-snapshot=debian-6.12-x86_64")
OUTCOMES = ("passed", "skipped", "failed", "errors", "xpassed", "xfailed", "warnings", "deselected")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_TITLE = re.compile(r"""\btitle=(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)')""")
_DIRECTIVE = re.compile(r"^\s*<!--\s*doc-test:(?P<body>.*?)-->\s*$")
_OUTPUT_TITLE = "output of "


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced block of a page: where it starts, its language, its title and its text."""

    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    title: str
    text: str
    directive: Optional[str]  # the body of a <!-- doc-test: ... --> comment on the line above


@dataclasses.dataclass(frozen=True)
class Example:
    """A test module of a page, with the files of its project and what the page claims about its run."""

    module: Block
    files: dict[str, str]
    outcomes: dict[str, int]
    backend: str
    args: tuple[str, ...]
    output: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.module.page.relative_to(ROOT)}:{self.module.line}:{self.module.title}"


def fenced_blocks(page: Path) -> list[Block]:
    """Every fenced block of a Markdown page, fences indented in lists included."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        body = [line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[index + 1 : end]]
        title_match = _TITLE.search(info)
        above = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        directive = _DIRECTIVE.match(above)
        blocks.append(
            Block(
                page=page,
                line=index + 1,
                language=info.split()[0] if info.split() else "",
                title=(title_match["dq"] if title_match["dq"] is not None else title_match["sq"])
                if title_match
                else "",
                text="\n".join(body) + "\n",
                directive=directive["body"].strip() if directive else None,
            )
        )
        index = end + 1
    return blocks


def is_test_module(block: Block) -> bool:
    return block.language == "python" and re.fullmatch(r"(?:[\w.-]+/)*test_\w+\.py", block.title) is not None


def is_project_file(block: Block) -> bool:
    return (
        bool(block.title)
        and not is_test_module(block)
        and re.fullmatch(r"(?:[\w.-]+/)*[\w.-]+", block.title) is not None
    )


def count_test_functions(source: str) -> int:
    """How many ``test_*`` functions a module defines at its top level."""
    tree = ast.parse(source)
    return sum(isinstance(node, ast.FunctionDef) and node.name.startswith("test_") for node in tree.body)


def claims(block: Block) -> tuple[dict[str, int], str, tuple[str, ...]]:
    """The outcomes, backend and extra arguments a test module's ``doc-test`` comment states."""
    if block.directive is None:
        return {"passed": count_test_functions(block.text)}, "fake", ()
    outcomes: dict[str, int] = {}
    backend, args = "fake", ()
    for word in shlex.split(block.directive):
        key, _, value = word.partition("=")
        if key in OUTCOMES:
            outcomes[key] = int(value)
        elif key == "backend" and value in ("fake", "local"):
            backend = value
        elif key == "args":
            args = tuple(shlex.split(value))
        else:
            raise ValueError(f"{block.page}:{block.line}: doc-test comment: unknown {word!r}")
    return outcomes, backend, args


def examples_of(page: Path) -> list[Example]:
    blocks = fenced_blocks(page)
    found = []
    for position, block in enumerate(blocks):
        if not is_test_module(block):
            continue
        files: dict[str, str] = {}
        for other in blocks[:position]:
            if is_project_file(other):
                files[other.title] = other.text
        for other in blocks[position + 1 :]:
            if is_project_file(other):
                files.setdefault(other.title, other.text)
        files[block.title] = block.text
        output = next((o for o in blocks if o.title == _OUTPUT_TITLE + block.title and o.line > block.line), None)
        shown = tuple(line.strip() for line in output.text.splitlines() if line.strip()) if output else ()
        outcomes, backend, args = claims(block)
        found.append(Example(block, files, outcomes, backend, args, shown))
    return found


EXAMPLES = [example for page in PAGES for example in examples_of(page)]


def pattern(shown: str) -> str:
    """An fnmatch pattern for a line the page shows: ``...`` is any text, and so is padding (two blanks or more,
    a rule of ``=`` or ``-``: its width depends on the terminal and the run's duration); the rest is literal."""
    parts = re.split(r"\.\.\.| {2,}|={3,}|-{3,}", shown)
    literal = "*".join(re.sub(r"([*?\[])", r"[\1]", part) for part in parts)
    return f"*{literal}*"


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.id for example in EXAMPLES])
def test_doc_example(pytester: pytest.Pytester, example: Example) -> None:
    for name, text in example.files.items():
        path = pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    backend = FAKE if example.backend == "fake" else ("--ktrace-backend=local",)
    result = pytester.runpytest(example.module.title, "-p", "no:cacheprovider", *backend, *example.args)
    result.assert_outcomes(**example.outcomes)
    if example.output:
        result.stdout.fnmatch_lines([pattern(line) for line in example.output])


def test_the_pages_have_runnable_examples() -> None:
    """The convention is followed: the tutorial and the how-to guides hold examples, and each is complete."""
    pages = {example.module.page.relative_to(ROOT).as_posix() for example in EXAMPLES}
    assert {"docs/tutorial/first-test.md", "docs/tutorial/real-kernel.md", "README.md"} <= pages
    assert len([page for page in pages if page.startswith("docs/how-to/")]) >= 3, pages
    for example in EXAMPLES:
        assert example.outcomes, f"{example.id}: the page claims no outcome"
        assert count_test_functions(example.module.text) >= 1, f"{example.id}: no test function"
    for page in PAGES:
        titles = {block.title for block in fenced_blocks(page)}
        for title in titles:
            if title.startswith(_OUTPUT_TITLE):
                assert title[len(_OUTPUT_TITLE) :] in titles, f"{page}: {title!r} follows no test module of that name"


def test_the_output_patterns_are_literal() -> None:
    assert pattern("a [001] ...*? b") == "*a [[]001] *[*][?] b*"
    assert pattern("=== 1 passed in ...s ===") == "** 1 passed in *s **"
    assert pattern("comm-1    [000] x") == "*comm-1*[[]000] x*"


# ---------------------------------------------------------------------------------------- the reference pages


def reference(name: str) -> str:
    return (DOCS / "reference" / name).read_text(encoding="utf-8")


def names(page: str, name: str) -> bool:
    """Whether ``page`` shows ``name`` in code (```name```, ```name=...```), not as the prefix of a longer one."""
    return re.search(rf"`{re.escape(name)}(?![\w-])", page) is not None


class _RecordingParser:
    """Stands in for ``pytest.Parser``: records what ``pytest_addoption`` declares."""

    def __init__(self) -> None:
        self.options: list[str] = []
        self.ini: list[str] = []

    def getgroup(self, name: str, description: str = "") -> _RecordingParser:
        return self

    def addoption(self, *names: str, **kwargs: Any) -> None:
        self.options.extend(names)

    def addini(self, name: str, help: str, *args: Any, **kwargs: Any) -> None:
        self.ini.append(name)


def test_every_option_and_ini_key_is_in_the_reference() -> None:
    from pytest_ktrace import plugin

    parser = _RecordingParser()
    plugin.pytest_addoption(parser)  # type: ignore[arg-type]
    page = reference("options.md")
    assert parser.options and parser.ini
    missing = [name for name in parser.options + parser.ini if not names(page, name)]
    assert not missing, f"docs/reference/options.md does not describe {missing}"


def _fixtures(pytester: pytest.Pytester) -> list[str]:
    """The fixtures pytest-ktrace defines, as ``pytest --fixtures`` lists them."""
    result = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")
    names, ours = [], False
    for line in result.stdout.lines:
        section = re.match(r"^-+ fixtures defined from (\S+)", line)
        if section:
            ours = section[1].startswith("pytest_ktrace")
        elif ours and re.match(r"^\w", line):
            names.append(re.split(r"[\s\[]", line, maxsplit=1)[0])
    return names


def test_every_fixture_is_in_the_reference(pytester: pytest.Pytester) -> None:
    fixtures = _fixtures(pytester)
    assert "ktrace" in fixtures, fixtures
    page = reference("fixtures.md")
    missing = [name for name in fixtures if not re.search(rf"^#+ `{name}`", page, re.MULTILINE)]
    assert not missing, f"docs/reference/fixtures.md has no section for {missing}"


def test_every_marker_and_argument_is_in_the_reference(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers", "-p", "no:cacheprovider")
    page = reference("markers.md")
    markers = [line for line in result.stdout.lines if line.startswith("@pytest.mark.ktrace")]
    assert len(markers) >= 2, result.stdout.lines
    for line in markers:
        name, arguments = re.match(r"@pytest\.mark\.(\w+)\(([^)]*)\)", line).groups()  # type: ignore[union-attr]
        assert re.search(rf"^#+ .*pytest\.mark\.{name}\(", page, re.MULTILINE), f"markers.md: no section for {name}"
        for argument in re.findall(r"(\w+)=", arguments):
            assert names(page, argument), f"markers.md does not describe {name}({argument}=)"


def _command() -> list[str]:
    script = Path(sys.executable).parent / "pytest-ktrace"
    found = str(script) if script.exists() else shutil.which("pytest-ktrace")
    assert found, "the pytest-ktrace command is not installed (pip install -e .)"
    return [found]


def test_every_command_and_its_options_are_in_the_reference() -> None:
    page = reference("cli.md")
    usage = subprocess.run([*_command(), "--help"], capture_output=True, text=True, check=True).stdout
    commands = re.findall(r"^ {4}([a-z][\w-]*)(?:\s|$)", usage, re.MULTILINE)  # argparse lists them indented by 4
    assert {"snapshot", "snapshots", "clean"} <= set(commands), usage
    for command in commands:
        assert re.search(rf"^#+ `pytest-ktrace {command}", page, re.MULTILINE), f"cli.md has no section for {command}"
        text = subprocess.run([*_command(), command, "--help"], capture_output=True, text=True, check=True).stdout
        for option in sorted(set(re.findall(r"(--[\w-]+)", text)) - {"--help"}):
            assert names(page, option), f"cli.md does not describe pytest-ktrace {command} {option}"


def test_every_public_name_is_in_the_api_pages_and_every_error_is_explained() -> None:
    import pytest_ktrace
    import pytest_ktrace.backends

    for module, page in ((pytest_ktrace, "api.md"), (pytest_ktrace.backends, "api-backends.md")):
        rendered = set(re.findall(rf"^::: {re.escape(module.__name__)}\.(\w+)$", reference(page), re.MULTILINE))
        missing = sorted(set(module.__all__) - rendered)
        assert not missing, f"docs/reference/{page} renders no '::: {module.__name__}.NAME' for {missing}"
    errors = reference("errors.md")
    for name in pytest_ktrace.__all__:
        value = getattr(pytest_ktrace, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert re.search(rf"^### `{name}`$", errors, re.MULTILINE), f"docs/reference/errors.md: no section {name}"
