"""The READMEs: the configuration table covers every setting, and the Chinese one keeps in step with the English.

README.zh-CN.md is a translation: its prose is free, but everything an operator
copies or looks up must be the English README's. The checks compare what a
translation never changes: the order and depth of the headings, every code block
(comments aside), the inline code, the environment variables, the paths and
routes, the numbers, the shape of every table, and the links.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from config import documented_variables

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_ZH = ROOT / "README.zh-CN.md"

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# An inline code span may wrap onto the next line, but never across a blank one.
CODE_SPAN = re.compile(r"(`+)((?:(?!\n\s*\n).)+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)\)")
# ALL_CAPS_WITH_UNDERSCORES (NVLLM_*, REDIS_URL, VLLM_*), and the shell variables code sets or reads.
ENV_NAME = re.compile(r"(?<![\w-])[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+(?![\w-])", re.ASCII)
SHELL_VAR = re.compile(r"\$\{?([A-Za-z_]\w*)|^\s*(?:export\s+)?([A-Za-z_]\w*)=", re.ASCII | re.MULTILINE)
# A path starts a token (or follows $BASE): /api/..., /v1/..., /healthz, /etc/nvllm/agent.token.
PATH = re.compile(r"(?:(?<=\$BASE)|(?<![\w.:/~$-]))/[A-Za-z_{<*][\w.{}<>*:~-]*(?:/[\w.{}<>*:~-]*)*", re.ASCII)
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*", re.ASCII)
# In a ```text block (a diagram, such as the source tree) the words are translated; its file names are not.
SHELLS = {"bash", "sh", "indented", ""}
FILE_NAME = re.compile(r"[\w/*.-]+\.(?:py|lua|sh|json|md|txt|yml)\b|^[\w/-]+/(?=\s)", re.ASCII | re.MULTILINE)


@dataclass
class CodeBlock:
    info: str
    heading: str  # the section it is in, for messages
    lines: list[str]


@dataclass
class Table:
    heading: str
    columns: int
    rows: int
    code: Counter
    numbers: Counter


@dataclass
class Readme:
    headings: list[tuple[int, str]] = field(default_factory=list)
    blocks: list[CodeBlock] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    prose: str = ""  # everything outside code blocks, lines joined


def strip_comment(line: str) -> str:
    """The line without a `#` comment (one at the start or after a space, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def code_lines(info: str, raw: list[str]) -> list[str]:
    """What a translation must keep of a code block: its code, comments removed, spaces collapsed."""
    if info == "text":
        return FILE_NAME.findall("\n".join(raw))
    lines = (" ".join(strip_comment(line).split()) for line in raw)
    return [line for line in lines if line]


def split_row(line: str) -> list[str]:
    return re.split(r"(?<!\\)\|", line.strip().strip("|"))


def parse(path: Path) -> Readme:
    readme = Readme()
    prose: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    heading = "(top)"
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        indented = line.startswith("    ") and (not prose or not prose[-1].strip())
        if fence or indented:
            if fence:
                closing = (j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence.group(1)))
                end = next(closing, len(lines))
                raw, info, i = lines[i + 1 : end], fence.group(2), end + 1
            else:
                end = i
                while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                    end += 1
                raw, info, i = lines[i:end], "indented", end
            readme.blocks.append(CodeBlock(info, heading, code_lines(info, raw)))
            prose.append("")
            continue
        if match := HEADING.match(line):
            heading = match.group(2)
            readme.headings.append((len(match.group(1)), heading))
        elif line.startswith("|"):
            end = i
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            rows = [row for row in lines[i:end] if not re.fullmatch(r"[\s|:-]+", row)]
            text = "\n".join(rows)
            spans = [span for _, span in CODE_SPAN.findall(text)]
            readme.tables.append(
                Table(heading, len(split_row(rows[0])), len(rows), Counter(spans), Counter(numbers(text)))
            )
            prose.extend(lines[i:end])
            i = end
            continue
        prose.append(line)
        i += 1
    readme.prose = "\n".join(prose)
    return readme


def code_spans(text: str) -> list[str]:
    return [" ".join(span.split()) for _, span in CODE_SPAN.findall(text)]


def numbers(text: str) -> list[str]:
    """The figures of a text: its numbers outside code spans and link targets."""
    text = CODE_SPAN.sub(" ", text)
    text = LINK.sub(lambda m: m.group(1), text)
    return NUMBER.findall(text)


def all_code(readme: Readme) -> str:
    return "\n".join(["\n".join(block.lines) for block in readme.blocks] + code_spans(readme.prose))


def env_names(readme: Readme) -> set[str]:
    text = readme.prose + "\n" + "\n".join("\n".join(block.lines) for block in readme.blocks)
    names = set(ENV_NAME.findall(text))
    for block in readme.blocks:
        if block.info not in SHELLS:
            continue
        for read, assigned in SHELL_VAR.findall("\n".join(block.lines)):
            names.add(read or assigned)
    return names


def paths(readme: Readme) -> set[str]:
    found = set()
    for match in PATH.findall(all_code(readme)):
        found.add(match if match.endswith("...") else match.rstrip(".,:;"))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (CJK kept), spaces to hyphens."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(readme: Readme) -> dict[str, int]:
    """Each heading's anchor, GitHub's way (a repeated one gets -1, -2, ...), to its position."""
    seen: Counter = Counter()
    result = {}
    for index, (_, text) in enumerate(readme.headings):
        base = slug(text)
        result[base if not seen[base] else f"{base}-{seen[base]}"] = index
        seen[base] += 1
    return result


def links(readme: Readme) -> list[str]:
    return [target for _, target in LINK.findall(CODE_SPAN.sub(" ", readme.prose))]


def difference(name: str, english: set | Counter, chinese: set | Counter) -> str:
    missing, extra = english - chinese, chinese - english
    return f"{name}: README.zh-CN.md lacks {sorted(missing)}, has extra {sorted(extra)}"


@pytest.fixture(scope="module")
def en() -> Readme:
    return parse(README)


@pytest.fixture(scope="module")
def zh() -> Readme:
    return parse(README_ZH)


@pytest.mark.parametrize("path", [README, README_ZH], ids=["en", "zh"])
def test_every_variable_is_in_the_configuration_table(path):
    text = path.read_text(encoding="utf-8")
    missing = [var for var, _, _ in documented_variables() if f"| `{var}` |" not in text]
    assert not missing, f"{path.name}'s configuration table lacks {missing}"


def test_each_readme_links_to_the_other_at_the_top():
    top_en = README.read_text(encoding="utf-8").split("\n## ", 1)[0]
    top_zh = README_ZH.read_text(encoding="utf-8").split("\n## ", 1)[0]
    assert re.search(r"中文说明: \[README\.zh-CN\.md\]\(README\.zh-CN\.md\)", top_en), top_en
    assert re.search(r"English: \[README\.md\]\(README\.md\)", top_zh), top_zh


def test_same_sections(en, zh):
    """A section left out or added shows as a different sequence of heading depths."""
    if [level for level, _ in en.headings] != [level for level, _ in zh.headings]:
        for index, ((level_en, text_en), (level_zh, text_zh)) in enumerate(zip(en.headings, zh.headings, strict=False)):
            assert level_en == level_zh, f"heading {index}: {'#' * level_en} {text_en} vs {'#' * level_zh} {text_zh}"
        assert len(en.headings) == len(zh.headings), f"{len(en.headings)} headings vs {len(zh.headings)}"


def test_same_code_blocks(en, zh):
    """Every command and code line, block by block; only comments are translated."""
    # Pairs first: a block left out shows as the first pair that differs, named by its section.
    for index, (block_en, block_zh) in enumerate(zip(en.blocks, zh.blocks, strict=False)):
        where = f"code block {index} (README.md, under {block_en.heading!r})"
        assert block_zh.info == block_en.info, f"{where}: ```{block_zh.info} instead of ```{block_en.info}"
        assert block_zh.lines == block_en.lines, difference(where, set(block_en.lines), set(block_zh.lines))
    assert len(zh.blocks) == len(en.blocks), f"code blocks: {len(zh.blocks)} in zh-CN, {len(en.blocks)} in README.md"


def test_same_commands(en, zh):
    """The shell commands, as a set: the first thing to look at when a block differs."""
    commands_en = {line for block in en.blocks if block.info in SHELLS for line in block.lines}
    commands_zh = {line for block in zh.blocks if block.info in SHELLS for line in block.lines}
    assert commands_en == commands_zh, difference("commands", commands_en, commands_zh)


def test_same_environment_variables(en, zh):
    assert env_names(en) == env_names(zh), difference("environment variables", env_names(en), env_names(zh))


def test_same_routes_and_paths(en, zh):
    assert paths(en) == paths(zh), difference("routes and paths", paths(en), paths(zh))


def test_same_inline_code(en, zh):
    spans_en, spans_zh = set(code_spans(en.prose)), set(code_spans(zh.prose))
    assert spans_en == spans_zh, difference("inline code", spans_en, spans_zh)


def test_same_figures(en, zh):
    figures_en, figures_zh = set(numbers(en.prose)), set(numbers(zh.prose))
    assert figures_en == figures_zh, difference("numbers", figures_en, figures_zh)


def test_same_tables(en, zh):
    for index, (table_en, table_zh) in enumerate(zip(en.tables, zh.tables, strict=False)):
        where = f"table {index} (README.md, under {table_en.heading!r})"
        shape_en, shape_zh = (table_en.columns, table_en.rows), (table_zh.columns, table_zh.rows)
        assert shape_zh == shape_en, f"{where}: {shape_zh} (columns, rows) instead of {shape_en}"
        assert table_zh.code == table_en.code, difference(f"{where}, inline code", table_en.code, table_zh.code)
        assert table_zh.numbers == table_en.numbers, difference(f"{where}, numbers", table_en.numbers, table_zh.numbers)
    assert len(zh.tables) == len(en.tables), f"tables: {len(zh.tables)} in zh-CN, {len(en.tables)} in README.md"


def test_same_links(en, zh):
    """The same pages, files and images; anchors go to the same sections (each README's own headings)."""
    mutual = {"README.md", "README.zh-CN.md"}
    outside_en = Counter(t for t in links(en) if not t.startswith("#") and t not in mutual)
    outside_zh = Counter(t for t in links(zh) if not t.startswith("#") and t not in mutual)
    assert outside_en == outside_zh, difference("links", outside_en, outside_zh)
    targets = {}
    for name, readme in (("README.md", en), ("README.zh-CN.md", zh)):
        known = anchors(readme)
        inside = [t[1:] for t in links(readme) if t.startswith("#")]
        broken = [t for t in inside if t not in known]
        assert not broken, f"{name} links to anchors no heading has: {broken}"
        targets[name] = Counter(known[t] for t in inside)
    english = {en.headings[i][1]: n for i, n in targets["README.md"].items()}
    chinese = {en.headings[i][1]: n for i, n in targets["README.zh-CN.md"].items()}
    assert english == chinese, f"links per section (named by README.md's headings): {english} vs {chinese}"
