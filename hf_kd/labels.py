"""Teacher and student classes matched by name: which teacher output feeds each student class.

``match_labels`` compares the label names of both models as strings, always:

- the same names in the same order: the teacher's logits are used as they are;
- the same names in another order: the teacher's logits are re-ordered by name;
- the teacher's names a superset of the student's (an ImageNet-1k teacher for a 10-class ImageNet subset): the
  teacher's logits are restricted to the student's classes, by name, before any softmax (the teacher's
  distribution over the student's classes);
- names without meaning on one side (``"0", "1", ...`` or ``LABEL_0, ...`` at their own index: integer ids, which
  say nothing about which class they are) and names that differ: refused, with the fix, unless the user gives an
  explicit mapping (``teacher_label_map``: student name -> teacher name or index).

Where a teacher's names are ImageNet synsets or their readable descriptions (timm's ImageNet configs), either form
matches (``teacher_name_forms``); ImageNet-1k classes named otherwise on the two sides (the Hub's ``ILSVRC/imagenet-1k``
renames one of timm's two "crane"s, since a ``ClassLabel`` cannot hold a name twice) are matched as synsets
(``imagenet_synsets``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

__all__ = ["LabelMatch", "match_labels", "teacher_name_forms", "load_label_map", "is_generic", "same_names",
           "imagenet_synsets"]


@dataclass(frozen=True)
class LabelMatch:
    """``index[k]``: the teacher output that student class k reads (None: the teacher's own order, all of it);
    ``note``: how the names were matched, for the log and the model card (None when identical)."""

    index: Optional[tuple[int, ...]] = None
    note: Optional[str] = None


def is_generic(names: Sequence[str]) -> bool:
    """Names that only number the classes: ``str(i)`` or ``LABEL_i`` at position i (transformers' defaults)."""
    return all(str(n) in (str(i), f"LABEL_{i}") for i, n in enumerate(names))


def same_names(names: Sequence[str], reference: Sequence[str]) -> bool:
    """``names`` equal ``reference``, position by position. A name that ``reference`` holds twice (ImageNet's two
    "crane"s) may be anything: a ``ClassLabel`` cannot hold it twice, so a copy (the Hub's ``ILSVRC/imagenet-1k``)
    must have renamed one of them."""
    if len(names) != len(reference):
        return False
    twice = {n for n, c in Counter(reference).items() if c > 1}
    return all(n == r or r in twice for n, r in zip(names, reference))


def imagenet_synsets(names: Sequence[str]) -> Optional[list[str]]:
    """``names`` as ImageNet-1k synsets, or None where they are not ImageNet-1k classes. Either the whole label set
    in ImageNet's order, by synset or by timm's description (``same_names``: the Hub's copy renames one "crane"),
    or any set of synsets and descriptions that name a single class each (a subset: folders ``n01440764/...``)."""
    try:
        from timm.data.imagenet_info import ImageNetInfo
    except ImportError:
        return None
    info = ImageNetInfo("imagenet-1k")
    synsets, descriptions = list(info.label_names()), [str(d) for d in info.label_descriptions()]
    names = [str(n) for n in names]
    if any(same_names(names, reference) for reference in (synsets, descriptions)):
        return synsets
    once = {d for d, c in Counter(descriptions).items() if c == 1}
    known = {**{d: s for d, s in zip(descriptions, synsets) if d in once}, **{s: s for s in synsets}}
    out = [known.get(n) for n in names]
    return out if all(out) and len(set(out)) == len(out) else None


def _names(config) -> list[str]:
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def teacher_name_forms(config) -> dict[str, list[str]]:
    """The teacher's label names (``"names"``), and the same classes under other names where its config or timm
    knows them: ``"descriptions"`` (a ``label_descriptions`` mapping in the config, or timm's ImageNet descriptions
    of synset names) and ``"synsets"`` (timm's ImageNet synsets of description names)."""
    names = _names(config)
    forms = {"names": names}
    described = getattr(config, "label_descriptions", None)
    if isinstance(described, dict) and all(n in described for n in names):
        forms["descriptions"] = [str(described[n]) for n in names]
    try:
        from timm.data.imagenet_info import ImageNetInfo, infer_imagenet_subset
    except ImportError:  # an older timm: synsets and descriptions are not cross-matched
        return forms
    subset = infer_imagenet_subset({"num_classes": len(names)})
    if subset:
        info = ImageNetInfo(subset)
        synsets = list(info.label_names())
        descriptions = [str(d) for d in info.label_descriptions()]
        if names == synsets:
            forms.setdefault("descriptions", descriptions)
        elif names == descriptions:
            forms["synsets"] = synsets
    return forms


def load_label_map(value) -> Optional[dict]:
    """``teacher_label_map`` as a dict: a dict, a JSON object string, or the path of a JSON file."""
    if value is None or isinstance(value, dict):
        return value
    text = value
    if os.path.isfile(os.path.expanduser(value)):
        with open(os.path.expanduser(value)) as f:
            text = f.read()
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--teacher_label_map must be a JSON object {{student label: teacher label or index}} or "
                         f"the path of a JSON file holding one; got {value!r} ({e}).") from None
    if not isinstance(mapping, dict):
        raise ValueError(f"--teacher_label_map must be a JSON object, got {type(mapping).__name__}.")
    return mapping


def _shown(names: Sequence[str], n: int = 6) -> str:
    names = list(names)
    return ", ".join(repr(x) for x in names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


_FIX = ("Distil a teacher trained on these classes (recipes/train_teacher.py on the student's data), or pass "
        "--teacher_label_map with a JSON object {{student label: teacher label or index}} for every student class.")


def _from_mapping(student: list[str], forms: list[list[str]], mapping: dict, what: str) -> LabelMatch:
    """``mapping`` (student name -> teacher name in any of its forms, or index) as a ``LabelMatch``."""
    missing = [n for n in student if n not in {str(k) for k in mapping}]
    if missing:
        raise ValueError(f"teacher_label_map gives no {what} class for the student's classes {_shown(missing)}: "
                         "map every student label name to a teacher label name or index.")
    mapping = {str(k): v for k, v in mapping.items()}
    n = len(forms[0])
    positions = {}
    for form in forms:
        for i, name in enumerate(form):
            positions.setdefault(name, i)
    index = []
    for name in student:
        target = mapping[name]
        if isinstance(target, int) or (isinstance(target, str) and target.isdigit() and target not in positions):
            i = int(target)
            if not 0 <= i < n:
                raise ValueError(f"teacher_label_map maps {name!r} to index {i}; the {what} has {n} classes.")
        elif str(target) in positions:
            i = positions[str(target)]
        else:
            raise ValueError(f"teacher_label_map maps {name!r} to {target!r}, which is not a label of the {what} "
                             f"({_shown(forms[0])}).")
        index.append(i)
    if len(set(index)) != len(index):
        twice = sorted({forms[0][i] for i in index if index.count(i) > 1})
        raise ValueError(f"teacher_label_map maps several student classes to the same {what} class "
                         f"({_shown(twice)}); each student class needs its own.")
    if index == list(range(n)):
        return LabelMatch(note=f"{what} classes mapped by teacher_label_map (same order)")
    return LabelMatch(index=tuple(index), note=f"{what} classes mapped by teacher_label_map: {len(student)} of "
                                              f"its {n} outputs used, in the student's order")


def match_labels(student_config, teacher_config, mapping: Optional[dict] = None,
                 what: str = "teacher") -> LabelMatch:
    """Which teacher output each student class reads, by label name (module docstring), or a ``ValueError`` that
    names the problem and the fix."""
    student = _names(student_config)
    named = teacher_name_forms(teacher_config)
    forms = list(named.values())
    teacher = named["names"]
    if mapping:
        return _from_mapping(student, forms, mapping, what)
    if student == teacher:
        return LabelMatch()
    if len(set(student)) != len(student):
        raise ValueError(f"The student's label names are not unique ({_shown(student)}), so they cannot be matched "
                         f"to the {what}'s by name. {_FIX.format()}")
    for side, names in (("student", student), (what, teacher)):
        if is_generic(names):
            raise ValueError(
                f"The {side}'s label names ({_shown(names)}) only number the classes, so hf_kd cannot tell which "
                f"{'teacher' if side == 'student' else 'student'} class each one is (the student's: "
                f"{_shown(student)}; the {what}'s: {_shown(teacher)}). Integer class ids and folder names sorted "
                f"as strings ('0', '1', '10', '2', ...) look alike but differ. Give the {side} its real label names "
                f"(a ClassLabel feature; config.id2label), or {_FIX[0].lower() + _FIX[1:].format()}")
    ambiguous = set()
    for kind, form in named.items():
        positions = {name: i for i, name in enumerate(form)}
        twice = {name for name in student if name in positions and form.count(name) > 1}
        ambiguous |= twice  # (ImageNet's descriptions repeat two names: 'crane', 'maillot')
        if twice or not all(name in positions for name in student):
            continue
        index = [positions[name] for name in student]
        by = "" if kind == "names" else f" (the {what}'s {kind})"
        if index == list(range(len(form))):
            return LabelMatch(note=f"label names matched{by}: same classes, same order")
        if len(form) == len(student):
            return LabelMatch(index=tuple(index), note=f"{what}'s outputs re-ordered by label name{by} to the "
                                                       "student's class order")
        return LabelMatch(index=tuple(index), note=(
            f"{what}'s {len(form)} classes restricted by label name{by} to the student's {len(student)}: its logits "
            "for the student's classes only, before the softmax"))
    # ImageNet classes named differently on the two sides (the Hub's copy, whose one "crane" is renamed, against
    # timm's descriptions with two; synsets against descriptions): matched as synsets
    student_synsets, teacher_synsets = imagenet_synsets(student), imagenet_synsets(teacher)
    if student_synsets and teacher_synsets and set(student_synsets) <= set(teacher_synsets):
        positions = {name: i for i, name in enumerate(teacher_synsets)}
        index = [positions[s] for s in student_synsets]
        if index == list(range(len(teacher_synsets))):
            return LabelMatch(note="label names matched as ImageNet-1k classes: same classes, same order")
        if len(index) == len(teacher_synsets):
            return LabelMatch(index=tuple(index), note=f"{what}'s outputs re-ordered by ImageNet-1k class to the "
                                                       "student's class order")
        return LabelMatch(index=tuple(index), note=(
            f"{what}'s {len(teacher_synsets)} classes restricted by label name (as ImageNet-1k classes) to the "
            f"student's {len(student)}: its logits for the student's classes only, before the softmax"))
    if ambiguous:
        raise ValueError(f"The {what} names several classes {_shown(sorted(ambiguous))}, so those student classes "
                         f"cannot be matched by name. {_FIX.format()}")
    unknown = [n for n in student if n not in set().union(*forms)]
    raise ValueError(
        f"The {what} and the student predict different classes: {len(unknown)} of the student's "
        f"{len(student)} labels are not among the {what}'s {len(teacher)} ({_shown(unknown)}; the {what} has "
        f"{_shown(teacher)}). Label names are matched as strings; the {what}'s classes must include every student "
        f"class. {_FIX.format()}")
