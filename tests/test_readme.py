"""The README is one screen that points into docs/; docs/results.md shows what results/ holds;
every command and relative link in them works, and none names a file a user does not have."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mlic.cli import _parser
from mlic.report import RESULTS_PAGE, TABLE_FILES

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 100  # one screen, give or take

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+[\"'][^\"']*[\"'])?\)")  # [a](target "title")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)  # [label]: target
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")
# What users do not have: the maintainers' files, their workplace, issue numbers, GPU tooling.
FORBIDDEN = re.compile(
    r"DESIGN\.md|CONVENTIONS\.md|\bshared/|give_back|carry=|\bissues?\s+#?\d+", re.IGNORECASE
)


def _prose(text: str) -> str:
    """The text without code blocks and inline code, where `[x](y)` is not a link."""
    return CODE.sub("", FENCE.sub("", text))


def _links(text: str) -> list[str]:
    prose = _prose(text)
    return LINK.findall(prose) + REFERENCE.findall(prose)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def test_the_results_page_holds_the_committed_results():
    page = (ROOT / RESULTS_PAGE).read_text()
    for name in TABLE_FILES:  # every table the report writes, Table 4b and Table 5 included
        table = (ROOT / "results" / "tables" / f"{name}.md").read_text().strip()
        stale = f"{RESULTS_PAGE} is stale for {name}: run `mlic report --readme {RESULTS_PAGE}`"
        assert table in page, stale
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    assert images and all(link.startswith("../results/figures/") for link in images), images
    for link in images:
        assert ((ROOT / RESULTS_PAGE).parent / link).is_file(), link


def test_the_readme_headline_is_table_1s_ours_row():
    table1 = (ROOT / "results" / "tables" / "table1.md").read_text()
    row = next(line for line in table1.splitlines() if line.startswith("| Ours"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    mean_std = re.fullmatch(r"(\d+\.\d+ ± \d+\.\d+) \(n=\d+\)", cells[3])
    assert mean_std, cells
    assert f"**{mean_std.group(1)} % mAP**" in README.read_text()


def test_the_readme_fits_one_screen_and_links_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    linked = {(ROOT / link).resolve() for link in _links(text)}
    assert DOCS and [p for p in DOCS if p.resolve() not in linked] == []


def test_the_readme_commands_exist():
    text = README.read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("reproduce", "test"):
        assert f"make {target}" in text and re.search(rf"^{target}:", makefile, re.M)
    # The README's command lines are complete: each one parses as it is written.
    lines = [ln for block in FENCE.findall(text) for ln in block.splitlines()]
    commands = [ln.split("  #")[0] for ln in lines if ln.startswith("mlic ")]
    assert len(commands) >= 5
    for line in commands:
        try:
            _parser().parse_args(shlex.split(line)[1:])
        except SystemExit:
            pytest.fail(f"README: `{line}` does not parse")


def test_the_docs_name_commands_that_exist():
    names = set(_parser()._subparsers._group_actions[0].choices)
    for page in PAGES:
        for used in re.findall(r"^mlic (\w+)", page.read_text(), re.M):
            assert used in names, f"{page.name}: mlic {used}"
    deviations = (ROOT / "docs" / "deviations.md").read_text()
    assert "## Deviations from the paper" in deviations
    assert all("PLACEHOLDER" not in page.read_text() for page in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_a_file_that_exists(page):
    for link in _links(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", link, re.I):  # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.name}: {link} -> {path} does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{page.name}: {link}: no heading #{anchor}"


def test_the_link_checker_catches_what_it_should():
    text = (
        "[a](docs/gone.md) ![b](../results/x.png 'title') and `[c](not-a-link)`\n"
        "```\n[d](in-a-code-block)\n```\n[e]: ref/target.md\n"
    )
    assert _links(text) == ["docs/gone.md", "../results/x.png", "ref/target.md"]
    assert _slug("The files you have, and other hostile inputs") == (
        "the-files-you-have-and-other-hostile-inputs"
    )
    assert _slug("The paper's tables, as typed in (`mlic/paper.py`)") == (
        "the-papers-tables-as-typed-in-mlicpaperpy"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_page_names_what_a_user_does_not_have(page):
    found = FORBIDDEN.findall(page.read_text())
    assert found == [], f"{page.name}: {found}"


def test_the_forbidden_pattern_matches_what_it_should():
    for bad in ("see DESIGN.md", "CONVENTIONS.md", "the workplace's shared/measurements",
                "then give_back", 'carry=[".whl"]', "issue 11", "Issue #13", "issues 3"):  # fmt: skip
        assert FORBIDDEN.search(bad), bad
    for fine in ("`model.batchformer: shared` reuses", "the issue of speed", "shared weights"):
        assert not FORBIDDEN.search(fine), fine
