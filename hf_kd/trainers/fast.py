"""The opt-in fast path (``DistillationArguments.fast_path``): the whole training step as one compiled graph.

A CIFAR ResNet step at batch 128 is bound by kernel launches and per-step Python, not by arithmetic. With the fast
path on, each trainer's step -- the batched augmentation of the uint8 batch, the forward of every network,
every loss term, the gradients and the optimizer update -- is traced into one graph with
``torch.compile(fullgraph=True)`` (on CUDA ``mode="reduce-overhead"``: CUDA graphs, inputs copied into static
buffers), and the step has no host sync. What is computed is unchanged:

- augmentation: the random parameters (crop offsets, flips, crop boxes) are drawn on the host from torch's global CPU
  RNG (``BatchAugment.draw``, the same calls as the eager path makes on the batch's device) and copied to the device
  without a sync; the pixel work runs inside the graph. The Trainer's RNG checkpoint holds the CPU RNG, so a resume is
  exact. On the CPU the draws are the eager path's own draws.
- gradients: ``torch.autograd.grad`` of the same loss, traced into the graph.
- optimizer: torch's own foreach SGD / Adam / AdamW update functions (``torch.optim.sgd.sgd``,
  ``torch.optim.adam.adam``, ``torch.optim.adamw.adamw`` with ``foreach=True``, Adam/AdamW ``capturable=True``) over
  the optimizer's own state tensors, one call per parameter group with that group's settings; the learning rates of
  the Trainer's schedule come in as a device tensor each step. ``Optimizer.step`` itself cannot run inside the
  graph: torch wraps it in ``torch._dynamo.graph_break()`` calls (``docs/design/fast_path.md``). The optimizer
  object keeps its groups and state, so checkpoints are those of the eager path (the Trainer sees it through
  ``StepInGraph``, whose ``step`` is a no-op). Parameters that get no gradient are left alone, as torch's
  optimizers do.
- per-step values: the trainer's ``step_inputs`` (host values such as FFSD's lambdas or MixSKD's mixup draw: Python
  floats become float64 device tensors, tensors are copied to the device) and the state one step hands to the next
  (``next_step_inputs``, e.g. LightSKD's DSR buffer: kept in one fixed device buffer per name, written after the
  update) are inputs of the compiled step, so a new value never compiles it again. The method code is the eager
  path's; it does not know which path runs it (``docs/design/fast_path.md``).
- loss terms: returned stacked and summed on the device, read and averaged at logging steps only (``log``); the
  gradient norm is computed in the graph (clipping too, with ``max_grad_norm``). A NaN or inf of any step stays in
  the sums (and in Trainer's loss sum), so the run stops at the next log (``DistillationTrainer.check_logged_loss``),
  or before the next evaluation or checkpoint; no per-step loss is kept, so the error names the steps since the
  last log rather than the step.

``FastStep.mode = "cuda_graph"`` captures the same step, uncompiled, in a ``torch.cuda.CUDAGraph`` instead (no compile
time, unfused kernels). Eval runs eager, at ``per_device_eval_batch_size`` (raised from transformers' default 8 to
1024 by the fast path). Dropout inside a network would draw from the device RNG inside the graph (none of hf_kd's
backbones uses it by default).
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch
import torch.nn as nn
from torch.optim.adam import adam
from torch.optim.sgd import sgd

from ..optim import init_hook_registries

__all__ = ["StepInGraph", "FastStep", "check_fast_path_args", "find_step_in_graph", "mark_persistent",
           "step_input_on_device"]

try:
    from torch.optim.adamw import adamw
except ImportError:  # newer torch: AdamW is Adam with decoupled weight decay
    adamw = None


def check_fast_path_args(args, world_size: int = 1) -> None:
    """Clear errors for settings the fast path does not support (``DistillationArguments`` and the trainer)."""
    problems = []
    if world_size > 1:
        problems.append(f"{world_size} processes (the gradients are taken with torch.autograd.grad, which DDP "
                        "does not all-reduce; run one process)")
    if args.gradient_accumulation_steps != 1:
        problems.append(f"gradient_accumulation_steps={args.gradient_accumulation_steps} (needs 1: the optimizer "
                        "update is inside the compiled step)")
    if args.fp16:
        problems.append("fp16 (needs a GradScaler outside the graph; use --bf16 true)")
    if args.torch_compile:
        problems.append("torch_compile (the fast path compiles the whole step itself; drop --torch_compile and "
                        "--torch_compile_backend/--torch_compile_mode)")
    if problems:
        raise ValueError("fast_path does not support: " + "; ".join(problems) + ". Turn fast_path off for these.")


def find_step_in_graph(optimizer) -> Optional["StepInGraph"]:
    """The ``StepInGraph`` behind the Trainer's optimizer (Accelerate wraps it in ``.optimizer``)."""
    while optimizer is not None and not isinstance(optimizer, StepInGraph):
        optimizer = getattr(optimizer, "optimizer", None)
    return optimizer


class StepInGraph(torch.optim.Optimizer):
    """The optimizer as the Trainer sees it on the fast path: the wrapped optimizer's groups, state and checkpoint
    format, and a ``step`` that does nothing, because the compiled training step already applied the update.

    Like ``CompositeOptimizer`` it subclasses ``torch.optim.Optimizer`` for ``isinstance`` checks (schedulers,
    Accelerate) without calling its ``__init__``.
    """

    def __init__(self, inner: torch.optim.Optimizer):
        self.inner = inner
        self.loads = 0  # bumped by load_state_dict: the compiled step then rebinds the new state tensors
        init_hook_registries(self)

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict]):
        self.inner.param_groups = groups

    @property
    def state(self):
        return self.inner.state

    @property
    def defaults(self) -> dict:
        return self.inner.defaults

    def step(self, closure=None):
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.inner.load_state_dict(state_dict)
        self.loads += 1

    def add_param_group(self, param_group: dict) -> None:
        self.inner.add_param_group(param_group)

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"StepInGraph({self.inner!r})"


def _sgd_foreach(params, grads, bufs, lr: torch.Tensor, weight_decay: float, momentum: float, nesterov: bool,
                 maximize: bool) -> None:
    """torch's foreach SGD (``torch.optim.sgd._multi_tensor_sgd``, dampening 0, momentum buffers present), op for op,
    with the learning rate as a device tensor the way torch applies it under ``torch.compile`` (p += g * -lr). Used
    only by the uncompiled step on CUDA (``mode="cuda_graph"``): there torch's foreach SGD turns a tensor lr into a
    Python number (a host sync), which a CUDA graph cannot capture."""
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if momentum != 0:
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads, alpha=1.0)
        if nesterov:
            grads = torch._foreach_add(grads, bufs, alpha=momentum)
        else:
            grads = bufs
    torch._foreach_add_(params, torch._foreach_mul(grads, -lr))


class _GroupUpdate:
    """One parameter group's update by torch's functional foreach SGD / Adam / AdamW, with the group's settings and
    the optimizer's state tensors bound (state created where the optimizer has none yet, exactly as its first eager
    step would leave it)."""

    def __init__(self, optimizer: torch.optim.Optimizer, group: dict):
        self.params = [p for p in group["params"] if p.requires_grad]
        self.group = group
        st = optimizer.state
        if isinstance(optimizer, torch.optim.SGD):
            if group["dampening"] != 0 or group.get("differentiable"):
                raise ValueError("fast_path supports SGD without dampening (torch's first step copies the gradient "
                                 "into the momentum buffer, which equals the fast path's only for dampening=0).")
            self.kind = "sgd"
            if group["momentum"] != 0:
                for p in self.params:
                    if st[p].get("momentum_buffer") is None:  # buf = momentum * 0 + g = g: torch's first step
                        st[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            self.state = [[st[p]["momentum_buffer"] for p in self.params]] if group["momentum"] != 0 else []
        elif isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            self.kind = "adamw" if isinstance(optimizer, torch.optim.AdamW) else "adam"
            for p in self.params:
                s = st[p]
                if "step" not in s:
                    s["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    s["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    s["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if group["amsgrad"]:
                        s["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                elif s["step"].device != p.device:  # a non-capturable optimizer keeps its step count on the CPU
                    s["step"] = s["step"].to(p.device, torch.float32)
            keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else []) + ["step"]
            self.state = [[st[p][k] for p in self.params] for k in keys]
        else:
            raise ValueError(f"fast_path updates SGD, Adam and AdamW inside the compiled step; got "
                             f"{type(optimizer).__name__}. Use --optim sgd / adamw_torch, or turn fast_path off.")
        for tensors in self.state:  # CUDA graphs: mutated in place at fixed addresses, never copied in
            for t in tensors:
                mark_persistent(t)

    def __call__(self, grads: list[Optional[torch.Tensor]], lr: torch.Tensor):
        keep = [k for k, g in enumerate(grads) if g is not None]  # known when tracing: no gradient, no update
        if not keep:
            return
        params, grads = [self.params[k] for k in keep], [grads[k] for k in keep]
        state = [[s[k] for k in keep] for s in self.state]
        g = self.group
        compiling = torch.compiler.is_compiling()
        if self.kind == "sgd":
            bufs = state[0] if state else [None] * len(params)
            if not compiling and lr.device.type != "cpu":
                return _sgd_foreach(params, grads, bufs, lr, g["weight_decay"], g["momentum"], g["nesterov"],
                                    g["maximize"])
            return sgd(params, grads, bufs, foreach=True, lr=lr if compiling else lr.item(), dampening=0.0,
                       weight_decay=g["weight_decay"], momentum=g["momentum"], nesterov=g["nesterov"],
                       maximize=g["maximize"])
        exp_avg, exp_avg_sq, *rest = state
        max_sq, steps = (rest[0], rest[1]) if g["amsgrad"] else ([], rest[0])
        capturable = lr.device.type != "cpu" or compiling
        if not capturable:  # the uncompiled step on the CPU: torch's Adam takes a tensor lr only when capturable
            lr = lr.item()  # (no device to sync with)
        kwargs = dict(foreach=True, capturable=capturable, amsgrad=g["amsgrad"], beta1=g["betas"][0],
                      beta2=g["betas"][1], lr=lr, weight_decay=g["weight_decay"], eps=g["eps"],
                      maximize=g["maximize"])
        if self.kind == "adamw":
            if adamw is not None:
                return adamw(params, grads, exp_avg, exp_avg_sq, max_sq, steps, **kwargs)
            kwargs["decoupled_weight_decay"] = True
        adam(params, grads, exp_avg, exp_avg_sq, max_sq, steps, **kwargs)


class FastStep:
    """Runs a ``DistillationTrainer``'s training steps through one compiled function (see the module docstring).

    ``mode``: "compile" (default) traces the step with ``torch.compile(fullgraph=True, **compile_options)``;
    ``compile_options`` default to ``mode="reduce-overhead"`` on CUDA (inductor + CUDA graphs) and inductor's default
    elsewhere (tests pass ``backend="aot_eager"`` to check the traced step on the CPU without inductor's compile
    time). "cuda_graph" captures the *eager* step (the same function, no compiler) into a ``torch.cuda.CUDAGraph``
    after ``warmup`` eager steps and replays it: no compile time, launches amortised, kernels unfused (off CUDA it
    runs the eager step).

    The trainer calls it once per training step with the batch, its ``step_inputs`` and the state carried from the
    previous step; it returns the loss and the state to carry to the next step. Each instance compiles its own step
    (``isolate_recompiles``): the compiled variants of one trainer never count against another's recompile limit.
    """

    def __init__(self, trainer, compile_options: Optional[dict] = None, mode: str = "compile", warmup: int = 2):
        self.trainer = trainer
        self.compile_options = compile_options
        self.mode, self.warmup = mode, warmup
        self.graphs: dict = {}  # "cuda_graph" mode: input signature -> _CapturedStep
        self.compiled = None  # the torch.compile'd step (mode "compile"), made on the first step
        self.steps = 0  # training steps run
        self._loads = -1
        self._built = False
        self.carried_buffers: dict[str, torch.Tensor] = {}  # name -> fixed device tensor of the carried state
        self.term_sums: dict[tuple, torch.Tensor] = {}  # names -> summed values (device)
        self.term_counts: dict[tuple, int] = {}
        self.grad_norm: Optional[torch.Tensor] = None

    # --- building ---------------------------------------------------------------------------------------------------
    def _options(self, device: torch.device) -> dict:
        if self.compile_options is not None:
            return dict(self.compile_options)
        return {"mode": "reduce-overhead"} if device.type == "cuda" else {}

    def build(self, model: nn.Module):
        """Bind the optimizer's groups and state and trace lazily (the first call compiles)."""
        t = self.trainer
        device = t.args.device
        wrapper = find_step_in_graph(t.optimizer)
        if wrapper is None:
            raise RuntimeError("fast_path: the Trainer's optimizer is not a StepInGraph (see _prepare_for_training)")
        opts = list(getattr(wrapper.inner, "optimizers", [wrapper.inner]))  # a CompositeOptimizer's optimizers
        updates = [_GroupUpdate(o, g) for o in opts for g in o.param_groups]
        if getattr(self, "updates", None) and len(self.updates) == len(updates):  # a resume: rebind the same objects
            for old, new in zip(self.updates, updates):  # (new identities would make dynamo recompile the step)
                old.__dict__.update(new.__dict__)
        else:
            self.updates = updates
        self.params = [p for u in self.updates for p in u.params]
        seen = {id(p) for p in self.params}
        missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
        if missing:
            raise RuntimeError(f"fast_path: trainable parameters in no optimizer group: {missing[:5]}")
        self.model = model
        aug = t.augmentation  # normalisation statistics on the device: no host-to-device copy inside the step
        aug.mean, aug.std = aug.mean.to(device), aug.std.to(device)
        self.graphs.clear()
        if self.mode not in ("compile", "cuda_graph"):
            raise ValueError(f"FastStep.mode must be 'compile' or 'cuda_graph', got {self.mode!r}")
        if self.mode == "compile" and self.compiled is None:
            if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
                raise RuntimeError(f"fast_path's compiled step traces torch.autograd.grad, which needs a torch "
                                   f"with torch._dynamo.config.trace_autograd_ops (this is {torch.__version__}); "
                                   "use trainer.fast_step.mode = 'cuda_graph' or upgrade torch.")
            # its own cache region: dynamo keeps compiled code per code object, which every FastStep shares
            own = {"isolate_recompiles": True} if "isolate_recompiles" in inspect.signature(torch.compile).parameters \
                else {}
            self.compiled = torch.compile(self._step, fullgraph=True, **own, **self._options(device))
        self._built = True
        self._loads = wrapper.loads

    def _step(self, pixels: torch.Tensor, labels: torch.Tensor, aug: tuple, lrs: torch.Tensor, step: dict):
        """One training step; traced whole. Returns (loss, stacked loss terms, gradient norm, term names, the state
        to carry to the next step)."""
        t = self.trainer
        x = t.augmentation.augment(pixels, aug) if pixels.dtype == torch.uint8 else pixels
        if t.args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        result = t.step_loss(self.model, x, labels, **step)
        loss, terms = result.loss, result.terms
        grads = list(torch.autograd.grad(loss, self.params, allow_unused=True))
        present = [g for g in grads if g is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(present))) if present else loss.new_zeros(())
        with torch.no_grad():
            if t.args.max_grad_norm and t.args.max_grad_norm > 0 and present:  # torch.nn.utils.clip_grad_norm_
                torch._foreach_mul_(present, torch.clamp(t.args.max_grad_norm / (norm + 1e-6), max=1.0))
            start = 0
            for k, update in enumerate(self.updates):
                n = len(update.params)
                update(grads[start:start + n], lrs[k])
                start += n
        stacked = torch.stack([v.detach().float() for v in terms.values()]) if terms else None
        carried = {name: value.detach() for name, value in result.carried.items()}
        return loss.detach(), stacked, norm.detach(), tuple(terms) if terms else (), carried

    def _run(self, args):
        """The step on ``args``: compiled, captured or plain, as ``mode`` and the device say."""
        device = self.trainer.args.device
        if self.mode == "cuda_graph":
            return self._graph_for(args)(args) if device.type == "cuda" else self._step(*args)
        if device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        with torch._dynamo.config.patch(trace_autograd_ops=True):  # torch.autograd.grad inside the graph
            return self.compiled(*args)

    # --- running ----------------------------------------------------------------------------------------------------
    def host_inputs(self, inputs: dict, step: dict, carried: dict):
        """Everything the step takes, on the device, without a host sync: the batch, the augmentation's random
        parameters (drawn on the CPU), the learning rates, the trainer's ``step`` inputs and the ``carried`` state
        (in this step's fixed buffers)."""
        t = self.trainer
        dev = t.args.device
        pixels = inputs["pixel_values"]
        aug = tuple(v.to(dev, non_blocking=True) for v in t.augmentation.draw(pixels.shape, "cpu")) \
            if pixels.dtype == torch.uint8 else ()
        pixels = pixels.to(dev, non_blocking=True)
        labels = inputs["labels"].to(dev, non_blocking=True)
        lrs = torch.tensor([float(u.group["lr"]) for u in self.updates], dtype=torch.float32)
        values = {name: self._carried_in(name, value, dev) for name, value in carried.items()}
        values.update(step_input_on_device(step, dev))
        return pixels, labels, aug, lrs.to(dev, non_blocking=True), values

    def _buffer(self, name: str, like: torch.Tensor, device) -> torch.Tensor:
        buf = self.carried_buffers.get(name)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.device != torch.device(device):
            buf = self.carried_buffers[name] = mark_persistent(torch.empty(like.shape, dtype=like.dtype,
                                                                           device=device))
        return buf

    def _carried_in(self, name: str, value, device):
        """A carried value as the step's input: its fixed buffer (a value set on the host, e.g. restored from a
        checkpoint, is copied into it first); None stays None."""
        if value is None or value is self.carried_buffers.get(name):
            return value
        return self._buffer(name, value, device).copy_(value, non_blocking=True)

    def __call__(self, model: nn.Module, inputs: dict, step: dict, carried: dict) -> tuple[torch.Tensor, dict]:
        """One training step on the batch ``inputs`` with the trainer's ``step`` inputs and the ``carried`` state:
        (the loss, the state to carry to the next step, each value in its fixed device buffer)."""
        t = self.trainer
        wrapper = find_step_in_graph(t.optimizer)
        if not self._built or wrapper is None or wrapper.loads != self._loads or model is not self.model:
            self.build(model)
        if not model.training:
            model.train()
        args = self.host_inputs(inputs, step, carried)
        loss, stacked, norm, names, out = self._run(args)
        self.steps += 1
        carried_out = {}
        for name, value in out.items():  # after the update: the step may read the buffer until its end
            carried_out[name] = self._buffer(name, value, value.device)
            carried_out[name].copy_(value)
        if names:
            if names in self.term_sums:
                self.term_sums[names] += stacked
                self.term_counts[names] += 1
            else:
                self.term_sums[names] = stacked.clone()
                self.term_counts[names] = 1
        self.grad_norm = norm
        return loss, carried_out

    def _graph_for(self, args) -> "_CapturedStep":
        key = _signature(args)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = _CapturedStep(self._step, self.warmup)
        return graph

    def pop_terms(self) -> dict[str, float]:
        """Mean of each loss term over the steps since the last call (one device-to-host copy)."""
        if not self.term_sums:
            return {}
        keys = list(self.term_sums)
        values = torch.cat([self.term_sums[k] for k in keys]).tolist()
        sums, counts, i = {}, {}, 0
        for k in keys:
            for name in k:
                sums[name] = sums.get(name, 0.0) + values[i]
                counts[name] = counts.get(name, 0) + self.term_counts[k]
                i += 1
        self.term_sums.clear()
        self.term_counts.clear()
        return {n: sums[n] / counts[n] for n in sums}

    def explain(self, model: Optional[nn.Module] = None, inputs: Optional[dict] = None):
        """``torch._dynamo.explain`` of one step (graph and graph-break counts), by default on the trainer's model
        and its first training batch, with the trainer's step inputs and carried state. It runs the step (the
        parameters are updated) and, as ``explain`` does, resets dynamo's caches (compiled steps of this process
        compile again on their next call)."""
        t = self.trainer
        if find_step_in_graph(t.optimizer) is None:
            t.create_optimizer()
            t.optimizer = StepInGraph(t.optimizer)
        model = t.model if model is None else model
        inputs = next(iter(t.get_train_dataloader())) if inputs is None else inputs
        if not self._built or model is not self.model:
            self.build(model)
        model.train()
        step = t.step_inputs(inputs["pixel_values"].shape[0], t.args.device)
        args = self.host_inputs(inputs, step, t.carried_inputs)
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            return torch._dynamo.explain(self._step)(*args)


def step_input_on_device(value, device):
    """A ``step_inputs`` value as the compiled step takes it: a Python float becomes a float64 device tensor (the
    host value exactly; as a tensor input, a new value does not compile the step again), a tensor is copied to the
    device (no sync), dicts, lists and tuples are converted item by item; anything else (None, bools, ints,
    strings) is passed as it is, and a change of it compiles the step again."""
    if isinstance(value, float):
        return torch.tensor(value, dtype=torch.float64).to(device, non_blocking=True)
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: step_input_on_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(step_input_on_device(v, device) for v in value)
    return value


def _signature(tree):
    """Structure, shapes and dtypes of the step's inputs: one CUDA graph per distinct signature."""
    if isinstance(tree, torch.Tensor):
        return tuple(tree.shape), tree.dtype, tree.device
    if isinstance(tree, dict):
        return tuple((k, _signature(v)) for k, v in tree.items())
    if isinstance(tree, (tuple, list)):
        return tuple(_signature(v) for v in tree)
    return tree


def _to_static(tree):
    """Fresh device buffers for the inputs; persistent tensors (``mark_persistent``) are used in place."""
    if isinstance(tree, torch.Tensor):
        return tree if getattr(tree, "_hf_kd_persistent", False) else tree.clone()
    if isinstance(tree, dict):
        return {k: _to_static(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(_to_static(v) for v in tree)
    return tree


def _copy_into(static, tree):
    if isinstance(tree, torch.Tensor):
        if static is not tree:
            static.copy_(tree, non_blocking=True)
    elif isinstance(tree, dict):
        for k, v in tree.items():
            _copy_into(static[k], v)
    elif isinstance(tree, (tuple, list)):
        for a, b in zip(static, tree):
            _copy_into(a, b)


def mark_persistent(t: torch.Tensor) -> torch.Tensor:
    """A tensor a method keeps across steps and the step mutates (e.g. LightSKD's DSR buffer): a fixed address for
    CUDA graphs (``torch._dynamo.mark_static_address`` for the compiled step; used in place by ``cuda_graph``)."""
    t._hf_kd_persistent = True
    if t.device.type == "cuda":
        torch._dynamo.mark_static_address(t)
    return t


class _CapturedStep:
    """The eager step as a ``torch.cuda.CUDAGraph``: ``warmup`` real steps run eagerly (on a side stream, as torch's
    whole-network capture recipe does), the next one is captured and replayed, and every later one copies its
    inputs into the captured buffers and replays. The step has no host sync, so it is capturable."""

    def __init__(self, fn, warmup: int):
        self.fn, self.warmup, self.calls = fn, warmup, 0
        self.graph = self.static = self.out = None

    def __call__(self, args):
        if self.graph is None and self.calls < self.warmup:
            self.calls += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.fn(*args)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            self.static = _to_static(args)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.fn(*self.static)
        else:
            _copy_into(self.static, args)
        self.graph.replay()
        return self.out
