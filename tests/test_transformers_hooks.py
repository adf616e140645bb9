"""Every private ``transformers.Trainer`` member hf_kd overrides or uses is documented in
docs/design/transformers_hooks.md, still exists in the installed transformers, and (for an overridden method) has the
signature recorded there. Overrides are found from the classes (the method registry plus ``DistillationTrainer``),
the members used from the package's source, so that a new one cannot go unnoticed."""

import inspect
import os
import re

import pytest
import transformers
import transformers.trainer
from transformers import Trainer

import hf_kd
from hf_kd.methods import methods
from hf_kd.trainers.base import DistillationTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "design", "transformers_hooks.md")
PACKAGE = os.path.dirname(os.path.abspath(hf_kd.__file__))
VERSION = transformers.__version__


def doc_table(heading: str) -> dict[str, list[str]]:
    """The rows of the table under ``## heading``: first cell (the member, without backticks) -> the other cells."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = [c.strip("`") for c in cells[1:]]
    return rows


def plain_signature(fn) -> str:
    """``(self, a, b=None)``: the parameters without annotations (these vary with the Python version)."""
    params = inspect.signature(fn).parameters.values()
    return "(" + ", ".join(str(p.replace(annotation=inspect.Parameter.empty)) for p in params) + ")"


def trainer_classes() -> list[type]:
    return [DistillationTrainer, *methods().values()]


def private_overrides() -> dict[str, set[str]]:
    """Hook name -> the hf_kd classes that define it: every non-dunder ``_name`` defined in an hf_kd trainer class
    (the registry's and their bases below ``Trainer``) that ``transformers.Trainer`` also has."""
    found = {}
    for cls in trainer_classes():
        for klass in cls.__mro__:
            if klass is Trainer or not issubclass(klass, Trainer):
                continue
            for name in vars(klass):
                if name.startswith("_") and not name.startswith("__") and hasattr(Trainer, name):
                    found.setdefault(name, set()).add(klass.__name__)
    return found


def transformers_private_names() -> set[str]:
    """Private names of ``Trainer``: its methods and the attributes its code sets on ``self``."""
    source = inspect.getsource(transformers.trainer)
    attrs = set(re.findall(r"self\.(_[A-Za-z]\w*)\s*=", source))
    return attrs | {n for n in dir(Trainer) if n.startswith("_") and not n.startswith("__")}


def used_private_members() -> dict[str, set[str]]:
    """Private ``Trainer`` members that the package's code touches without overriding them (``x._name`` or
    ``getattr(x, "_name")``) -> the files that do."""
    known, overridden = transformers_private_names(), set(private_overrides())
    used = {}
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(folder, file)
            with open(path, encoding="utf-8") as f:
                source = f.read()
            names = set(re.findall(r"\b(?:self|trainer)\.(_[A-Za-z]\w*)", source))
            names |= set(re.findall(r"\b(?:get|set|has)attr\(\s*(?:self|trainer)\s*,\s*\"(_[A-Za-z]\w*)\"", source))
            for name in names & known - overridden:
                if not name.startswith("__"):
                    used.setdefault(name, set()).add(os.path.relpath(path, ROOT))
    return used


def test_the_registry_is_searched():
    """The discovery below sees every registered method (else an empty registry would pass)."""
    assert len(trainer_classes()) >= 6, trainer_classes()
    assert "_save_checkpoint" in private_overrides()  # the search finds at least what is known to be overridden


@pytest.mark.parametrize("name", sorted(private_overrides()))
def test_each_overridden_hook_is_documented_with_its_signature(name):
    rows = doc_table("Overridden private methods")
    owners = ", ".join(sorted(private_overrides()[name]))
    assert name in rows, (
        f"{owners} overrides transformers.Trainer.{name}{plain_signature(getattr(Trainer, name))} (transformers "
        f"{VERSION}), which docs/design/transformers_hooks.md does not list: replace it by a public hook or callback, "
        "or add it to the table 'Overridden private methods' with its reason and the version checked.")
    recorded = rows[name][0]
    installed = plain_signature(getattr(Trainer, name))
    assert installed == recorded, (
        f"transformers.Trainer.{name} changed: docs/design/transformers_hooks.md records {name}{recorded}, the "
        f"installed transformers {VERSION} has {name}{installed}. Check {owners}.{name} against the new code, then "
        "update the signature and the version in the doc.")


@pytest.mark.parametrize("name", sorted(doc_table("Overridden private methods")))
def test_each_documented_hook_exists_and_is_overridden(name):
    recorded = doc_table("Overridden private methods")[name][0]
    assert hasattr(Trainer, name), (
        f"transformers.Trainer.{name}{recorded} is gone in the installed transformers {VERSION}: hf_kd's override is "
        "never called. Find where that work moved (docs/design/transformers_hooks.md says what the override does) "
        "or keep transformers within the bound in pyproject.toml.")
    assert name in private_overrides(), (
        f"docs/design/transformers_hooks.md lists {name}{recorded}, which no hf_kd trainer overrides any more: drop "
        "its row.")


@pytest.mark.parametrize("name", sorted(used_private_members()))
def test_each_used_private_member_is_documented(name):
    files = ", ".join(sorted(used_private_members()[name]))
    assert name in doc_table("Private members used without overriding them"), (
        f"{files} uses transformers.Trainer's private {name} (transformers {VERSION}), which "
        "docs/design/transformers_hooks.md does not list: use a public API, or add it to the table 'Private members "
        "used without overriding them' with its reason.")


@pytest.mark.parametrize("name", sorted(doc_table("Private members used without overriding them")))
def test_each_documented_private_member_exists_and_is_used(name):
    assert name in transformers_private_names(), (
        f"transformers.Trainer has no {name} any more (installed transformers {VERSION}), which hf_kd uses "
        "(docs/design/transformers_hooks.md says where and why): adapt that code, or keep transformers within the "
        "bound in pyproject.toml.")
    assert name in used_private_members(), (
        f"docs/design/transformers_hooks.md lists Trainer's {name}, which hf_kd no longer uses: drop its row.")


def test_the_doc_names_the_installed_version():
    """The version the hooks were checked against is the one the suite runs with (the bound in pyproject.toml)."""
    with open(DOC, encoding="utf-8") as f:
        checked = re.search(r"Checked against transformers (\d+\.\d+\.\d+)", f.read())
    assert checked, "docs/design/transformers_hooks.md must say 'Checked against transformers X.Y.Z'"
    same_minor = checked.group(1).split(".")[:2] == VERSION.split(".")[:2]
    assert same_minor, (f"docs/design/transformers_hooks.md was checked against transformers {checked.group(1)}, the "
                        f"installed one is {VERSION}: check every hook against it and update the doc and the bound "
                        "in pyproject.toml.")
