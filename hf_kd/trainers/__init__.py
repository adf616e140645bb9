"""Trainers: the shared ``DistillationTrainer`` base and one file per method (loaded on first use: they import
transformers' Trainer). Each method's trainer and arguments class is found through the registry
(``hf_kd.methods``)."""

from .._lazy import lazy_getattr

_BASE = {**dict.fromkeys(["DistillationModel", "DistillationOutput", "DistillationTrainer", "NonFiniteLossError"],
                        ".base"),
         "DistillationArguments": "..arguments"}


def _method_names():
    from ..methods import exported_names

    return exported_names()


def _defining_module(attr):
    from ..methods import defining_module

    return defining_module(attr)


__getattr__ = lazy_getattr(__name__, _BASE, more=_defining_module)


def __dir__():
    return sorted(set(globals()) | set(_BASE) | set(_method_names()))
