"""The docs are true to the repository: no placeholders left in, no references to files that do not exist,
no commands that read or write under /tmp (a reader's /tmp is not ours; a script there is not in the repo)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(
    p
    for p in [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), ROOT / "results/README.md", ROOT / "benchmarks/README.md"]
    if p.is_file()
)
IDS = [str(p.relative_to(ROOT)) for p in DOCS]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE = re.compile(r"(`+)([^`]+?)\1")
# a left-in placeholder: BUDGET_TABLE, SUITES_SECTION; TODO, TBD, FIXME (in prose, not in code, where
# CAPITALS_WITH_UNDERSCORES are environment variables and constants)
PLACEHOLDER = re.compile(r"\b(?:[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|TODO|TBD|FIXME|XXX)\b")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
REPO_DIRS = ("attn_zoo", "tests", "docs", "suites", "examples", "benchmarks", "scripts", "results")
# a repository path (`suites/quick.toml`, `attn_zoo/mechanisms/base.py`) or a page beside this one (`presets.md`)
REPO_PATH = re.compile(rf"^(?:{'|'.join(REPO_DIRS)})/[\w.*/-]+$|^[\w-]+\.md$")
# /tmp, except Ray's own state directory (a fact about Ray, not a path our commands use)
TMP = re.compile(r"(?<![\w.])/tmp\b(?!/ray\b)")
# pages that record one-off comparisons with a paper's official code, as they were run (the scripts are quoted
# in the page): a record keeps the paths it ran with
RECORDS = ("docs/mechanisms/",)


def _prose(text: str) -> str:
    return INLINE.sub(" ", FENCE.sub(" ", text))


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_no_placeholders(doc):
    text = doc.read_text()
    prose = _prose(text)
    found = sorted({m.group(0) for m in PLACEHOLDER.finditer(prose)})
    assert not found, f"{doc.relative_to(ROOT)}: placeholder(s) left in the text: {', '.join(found)}"


def _exists(doc: Path, target: str) -> bool:
    target = target.split("#")[0].rstrip("/")
    if not target:
        return True
    for base in (doc.parent, ROOT):
        if "*" in target:
            if any(base.glob(target)):
                return True
        elif (base / target).exists():
            return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_links_and_paths_exist(doc):
    text = doc.read_text()
    missing = []
    for m in LINK.finditer(text):
        target = m.group(1)
        if not re.match(r"^[a-z]+:|^#|^/", target) and not _exists(doc, target):
            missing.append(f"line {_line(text, m.start())}: link {target}")
    for m in INLINE.finditer(FENCE.sub(lambda f: "\n" * f.group(0).count("\n"), text)):
        span = m.group(2).strip()
        generated = span.startswith("results/") and not span.startswith(("results/reference", "results/README"))
        if REPO_PATH.match(span) and not generated and not _exists(doc, span):
            missing.append(f"line {_line(text, m.start())}: `{span}`")
    assert not missing, f"{doc.relative_to(ROOT)} names files the repository does not have: {'; '.join(missing)}"


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_no_tmp_paths(doc):
    if str(doc.relative_to(ROOT)).startswith(RECORDS):
        pytest.skip("a record of one-off comparisons with the official code, with the paths it ran with")
    text = doc.read_text()
    lines = sorted({_line(text, m.start()) for m in TMP.finditer(text)})
    assert not lines, (
        f"{doc.relative_to(ROOT)}: /tmp on line(s) {', '.join(map(str, lines))}: commands must use paths a reader "
        "has (a scratch folder they make, `mktemp -d`), and scripts cited must be in the repository"
    )


def test_the_checks_catch_what_they_are_for(tmp_path):
    doc = tmp_path / "docs" / "x.md"
    doc.parent.mkdir()
    text = "Speed:\n\nBUDGET_TABLE\n\nsee [env](environment.md) and `suites/nope.toml`\n```\ncp a /tmp/b\n```\n"
    doc.write_text(text)
    assert PLACEHOLDER.findall(_prose(text)) == ["BUDGET_TABLE"]
    assert not _exists(doc, "environment.md") and not _exists(doc, "suites/nope.toml")
    assert TMP.search(text)
    assert not PLACEHOLDER.findall(_prose("`$ATTN_ZOO_PLUGINS` and\n```\nOMP_NUM_THREADS=1 x\n```\n"))
