"""Lazy attributes for hf_kd's packages (PEP 562), so that ``import hf_kd`` stays cheap.

``import hf_kd`` only registers the CIFAR backbones in timm (that needs timm, hence torch); the trainers
(transformers' Trainer), data loading (datasets, torchvision transforms), metrics (evaluate) and cards (matplotlib,
jinja2) are imported on first use. ``benchmarks/import_time.py`` measures it.
"""

from __future__ import annotations

import importlib


def lazy_getattr(package: str, names: dict[str, str], more=None):
    """A module ``__getattr__`` that imports ``names[attr]`` (a module relative to ``package``) on first access.

    ``more``: a function giving the absolute module of a class name not in ``names`` (or None): the methods' trainer
    and arguments classes, found in the trainer package (``hf_kd.methods.defining_module``), so no method is listed
    by hand.
    """

    def __getattr__(attr: str):
        module = names.get(attr)
        if module is None and more is not None and attr[:1].isupper():  # a class name (never a submodule's)
            module = more(attr)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        value = getattr(importlib.import_module(module, package), attr)
        setattr(importlib.import_module(package), attr, value)  # later lookups skip __getattr__
        return value

    return __getattr__
