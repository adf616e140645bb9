"""The documentation stands alone and stays true: the generated argument reference is current, every relative link
and anchor in README.md, CHANGELOG.md and docs/ resolves, the README stays a front door (< 300 lines), and no tracked
file cites notes outside the repository or an issue number."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

from processes import run_process

ROOT = Path(__file__).resolve().parent.parent

# Measured records (commands and paths as they ran), not prose: left as recorded.
RECORDS = ("benchmarks/results/",)

# Built from pieces so that this file does not match its own patterns.
OUTSIDE_NOTES = re.compile("|".join([
    r"\bMETHODS" + r"\.md", r"\bMETHODS" + r"\s+(?:\d|§|\")",  # the method notes, by name or section
    r"HF_" + r"NOTES",  # the HuggingFace notes
    r"\.\./" + r"shared\b", r"[\"'/]shared[\"']? */ *[\"']data",  # the shared data folder beside the repository
    r"/wo" + r"rk/",  # absolute paths of the development machine
    r"\b[Ii]ssues?[-\s]+#?\d+", r"(?<![\w/&#])#\d+\b",  # issue citations: "issue", or a hash, and a number
]))


def tracked_text_files() -> list[Path]:
    try:
        listing = run_process(["git", "ls-files"], cwd=ROOT, timeout=60)
    except OSError:
        listing = None
    if listing is not None and listing.returncode == 0:
        names = listing.stdout.split()
    else:  # not a git checkout: every file under the root
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
    files = []
    for name in names:
        path = ROOT / name
        if name.startswith(RECORDS) or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary (images)
        files.append(path)
    return files


def test_no_reference_to_notes_outside_the_repository():
    hits = []
    for path in tracked_text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            m = OUTSIDE_NOTES.search(line)
            if m:
                hits.append(f"{path.relative_to(ROOT)}:{number}: {m.group(0)!r} in {line.strip()[:120]!r}")
    assert not hits, ("these lines cite notes outside the repository or an issue number; write what the reader needs "
                      "into docs/ and cite the docs page, the paper or the official file instead:\n" + "\n".join(hits))


def test_argument_reference_is_current():
    spec = importlib.util.spec_from_file_location("generate_reference", ROOT / "docs" / "generate_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (ROOT / "docs" / "reference" / "arguments.md").read_text(encoding="utf-8")
    assert committed == module.generate(), (
        "docs/reference/arguments.md is stale (an argument class changed): run python docs/generate_reference.py")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def without_code(text: str) -> str:
    """The markdown without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped (except - and _), spaces to -."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    heading = heading.replace("`", "").replace("*", "")
    heading = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return heading.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        found.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return found


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def test_every_relative_link_resolves():
    broken = []
    for doc in doc_files():
        assert doc.is_file(), f"{doc.relative_to(ROOT)} is missing"
        for target in LINK.findall(without_code(doc.read_text(encoding="utf-8"))):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not fetched
                continue
            file_part, _, fragment = target.partition("#")
            dest = (doc.parent / file_part).resolve() if file_part else doc
            where = f"{doc.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                broken.append(f"{where}: no heading with anchor #{fragment}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_slug_follows_github():
    assert slug("hf_kd against the official code, whole runs") == "hf_kd-against-the-official-code-whole-runs"
    assert slug("FFSD: online KD (`FFSDTrainer`)") == "ffsd-online-kd-ffsdtrainer"
    assert slug("H200, 15k/5k subsets, ResNet-20") == "h200-15k5k-subsets-resnet-20"


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 300, f"README.md has {len(lines)} lines; move detail into docs/ (limit 300)"
    # CI (.ci/run) runs the README's test command
    assert any('pip install -e ".[dev]" && python -m pytest -q' in line for line in lines)


def test_link_check_finds_a_broken_link(tmp_path, monkeypatch):
    """The link check can fail: a missing file and a missing anchor are both reported."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# Title\n[a](docs/missing.md) [b](#nowhere) [c](#title) `[d](x.md)`\n")
    (tmp_path / "CHANGELOG.md").write_text("# Changelog\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    try:
        test_every_relative_link_resolves()
    except AssertionError as e:
        message = str(e)
    else:
        raise AssertionError("the link check passed on broken links")
    assert "(docs/missing.md): no such file" in message and "#nowhere" in message
    assert "(x.md)" not in message and "#title" not in message


def test_outside_notes_pattern_catches_citations():
    for line in ["see METHODS" + ".md section 2", "(METHODS" + " 1.3)", "HF_" + "NOTES §3.3", "../" + "shared/data",
                 "/wo" + "rk/shared", "(issue" + " 17)", "fixes #" + "12"]:
        assert OUTSIDE_NOTES.search(line), line
    for line in ["METHODS = list(methods())", "color #1f77b4", "docs/methods/ffsd.md", "[x](#accuracy-on-real)"]:
        assert not OUTSIDE_NOTES.search(line), line
