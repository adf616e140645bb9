"""The method registry: every ``DistillationTrainer`` subclass that declares a ``method_name`` in a module of
``hf_kd.trainers``, found by importing those modules (on first use: they import transformers' Trainer).

There is no hand-kept list of methods anywhere else: the package's exports (``hf_kd.KDTrainer``, ...), the model
cards (``card_template``, ``recipe``), the recipe runner (``uses_teacher``) and the tests read this. A new method is
a loss module (``hf_kd/losses/``), a modules file (``hf_kd/modules/``: its parts and its ``DistillationModel``), a
trainer file (``hf_kd/trainers/``), a recipe (``recipes/``), a preset (``recipes/configs/``) and a card template
(``model_cards/``), plus its measured 2-process tolerance and recipe architecture in ``tests/test_distributed.py``
(docs/guides/adding_a_method.md).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import pkgutil
import re

__all__ = ["methods", "get_method", "exported_names", "defining_module"]

_NOT_METHODS = ("base", "fast")  # trainer-package modules that hold no method


@functools.lru_cache(maxsize=None)
def methods() -> dict[str, type]:
    """``method_name`` -> trainer class, for every method of ``hf_kd.trainers``, sorted by name."""
    trainers = importlib.import_module(f"{__package__}.trainers")
    from .trainers.base import DistillationTrainer

    found = {}
    for info in pkgutil.iter_modules(trainers.__path__):
        if info.name.startswith("_") or info.name in _NOT_METHODS:
            continue
        module = importlib.import_module(f"{trainers.__name__}.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, DistillationTrainer) and cls.__module__ == module.__name__ and \
                    "method_name" in vars(cls):
                if cls.method_name in found:
                    raise RuntimeError(f"two trainers declare method_name '{cls.method_name}': "
                                       f"{found[cls.method_name].__name__} and {cls.__name__}")
                found[cls.method_name] = cls
    return dict(sorted(found.items()))


def get_method(name: str) -> type:
    """The trainer class of method ``name``, with the known names in the error."""
    registry = methods()
    if name not in registry:
        raise KeyError(f"unknown method '{name}'; known: {', '.join(registry)}")
    return registry[name]


@functools.lru_cache(maxsize=None)
def exported_names() -> dict[str, str]:
    """Public name -> defining module, for every method's trainer and arguments class (``hf_kd``'s lazy exports)."""
    names = {}
    for cls in methods().values():
        names[cls.__name__] = cls.__module__
        names[cls.args_class.__name__] = cls.args_class.__module__
    return names


def defining_module(name: str):
    """The module of ``hf_kd.trainers`` whose source defines class ``name`` (read, not imported), or None: so that
    ``hf_kd.KDTrainer`` imports the KD trainer module alone, not every method's."""
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainers")
    pattern = re.compile(rf"^class {re.escape(name)}\b", re.M)
    for info in pkgutil.iter_modules([folder]):
        if info.name.startswith("_") or info.name in _NOT_METHODS:
            continue
        with open(os.path.join(folder, f"{info.name}.py"), encoding="utf-8") as f:
            if pattern.search(f.read()):
                return f"{__package__}.trainers.{info.name}"
    return None

