"""``CompositeOptimizer``: several torch optimizers acting as one (FFSD's SGD over the networks + Adam over the
decoders, under the Trainer's one learning-rate schedule)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch

__all__ = ["CompositeOptimizer", "init_hook_registries"]

_HOOK_REGISTRIES = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
                    "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
                    "_optimizer_load_state_dict_post_hooks")


def init_hook_registries(optimizer: torch.optim.Optimizer) -> None:
    """The hook registries ``torch.optim.Optimizer.__init__`` would create, for a wrapper that subclasses it without
    calling it (its hook API then works; no hooks run on the wrapper itself)."""
    for name in _HOOK_REGISTRIES:
        setattr(optimizer, name, OrderedDict())


class CompositeOptimizer(torch.optim.Optimizer):
    """Several torch optimizers (e.g. SGD over some parameter groups, Adam over others) acting as one.

    ``param_groups`` is the live concatenation of the inner optimizers' groups, so the Trainer's learning-rate scheduler
    scales every group from its own initial lr; ``step`` / ``zero_grad`` call each inner optimizer; ``state_dict`` /
    ``load_state_dict`` keep every inner state (exact resume). Like Accelerate's ``AcceleratedOptimizer`` it subclasses
    ``torch.optim.Optimizer`` for ``isinstance`` checks without calling its ``__init__``: groups and state are the inner
    optimizers'.
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]):
        if not optimizers:
            raise ValueError("CompositeOptimizer needs at least one optimizer")
        self.optimizers = list(optimizers)
        seen = set()
        for opt in self.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in seen:
                        raise ValueError("a parameter appears in two of the CompositeOptimizer's optimizers")
                    seen.add(id(p))
        init_hook_registries(self)

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    @param_groups.setter
    def param_groups(self, groups: list[dict]):
        groups, start = list(groups), 0
        if len(groups) != sum(len(opt.param_groups) for opt in self.optimizers):
            raise ValueError("CompositeOptimizer.param_groups can only be replaced group for group")
        for opt in self.optimizers:
            n = len(opt.param_groups)
            opt.param_groups = groups[start:start + n]
            start += n

    @property
    def state(self) -> dict:
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    @property
    def defaults(self) -> dict:
        return self.optimizers[0].defaults

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        states = state_dict.get("optimizers") if isinstance(state_dict, dict) else None
        if states is None or len(states) != len(self.optimizers):
            raise ValueError(f"This optimizer state does not come from a CompositeOptimizer of {len(self.optimizers)} "
                             "optimizers; resume with the same method and arguments as the run that saved it.")
        for opt, s in zip(self.optimizers, states):
            opt.load_state_dict(s)

    def add_param_group(self, param_group: dict) -> None:
        raise NotImplementedError("Add the group to one of CompositeOptimizer.optimizers instead.")

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self) -> str:
        inner = ",\n".join("  " + repr(opt).replace("\n", "\n  ") for opt in self.optimizers)
        return f"{type(self).__name__}(\n{inner}\n)"
