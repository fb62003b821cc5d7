"""The README and the guides in docs/ stay true to the tree: every test they name exists, the
README links every guide and only guides that exist, relative links and their anchors resolve,
and every repository path and instseg module they name is there."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDES = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *GUIDES, ROOT / "benchmarks" / "README.md"]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`]+)`")
REPO_PATH = re.compile(r"(?<![\w./-])((?:instseg|tests|benchmarks|conf|notebooks|docs)/[\w./-]*)")
MODULE = re.compile(r"(?<![\w.])instseg(?:\.\w+)+")


FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def _code(text: str) -> list[str]:
    """The code spans of the prose and the fenced code blocks."""
    return CODE_SPAN.findall(_prose(text)) + FENCE.findall(text)


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", _prose(page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_test_named_in_the_readme_and_the_guides_exists():
    defined = {match for path in (ROOT / "tests").rglob("test_*.py")
               for match in re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.M)}
    for page in PAGES:
        named = set(re.findall(r"`(test_\w+)`", page.read_text()))
        assert named <= defined, (page.relative_to(ROOT), sorted(named - defined))


def test_the_readme_links_every_guide_and_every_guide_it_links_exists():
    linked = {target.split("#")[0] for target in LINK.findall(README.read_text())
              if re.fullmatch(r"docs/[\w-]+\.md(#.*)?", target)}
    missing = sorted(path for path in linked if not (ROOT / path).is_file())
    assert not missing, f"linked from README.md but absent: {missing}"
    unlinked = [str(path.relative_to(ROOT)) for path in GUIDES
                if str(path.relative_to(ROOT)) not in linked]
    assert not unlinked, f"guides the README does not link: {unlinked}"


def test_relative_links_and_their_anchors_resolve():
    broken = []
    for page in PAGES:
        for target in LINK.findall(_prose(page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_every_repository_path_the_pages_name_exists():
    missing = []
    for page in PAGES:
        for span in _code(page.read_text()):
            for path in REPO_PATH.findall(span):
                if not (ROOT / path).exists():
                    missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, missing


def _names_something(dotted: str) -> bool:
    """`instseg.a.b.name`: a module or package of the tree, or a name its source mentions."""
    parts = dotted.split(".")
    if parts[:2] == ["instseg", "conf"]:  # conf/, installed as instseg.conf (setup.cfg)
        return (ROOT / "conf").is_dir()
    path = ROOT / "instseg"
    for index, part in enumerate(parts[1:], start=1):
        if (path / part / "__init__.py").is_file():
            path = path / part
        elif (path / f"{part}.py").is_file():
            rest = parts[index + 1:]
            return not rest or re.search(rf"\b{rest[0]}\b", (path / f"{part}.py").read_text())
        else:
            return bool(re.search(rf"\b{part}\b", (path / "__init__.py").read_text()))
    return True


def test_every_instseg_module_the_pages_name_exists():
    missing = []
    for page in PAGES:
        for span in _code(page.read_text()):
            missing += [f"{page.relative_to(ROOT)}: {name}" for name in MODULE.findall(span)
                        if not _names_something(name)]
    assert not missing, missing
