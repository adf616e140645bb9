"""The one rule for the dtype losses compute in: half precision is upcast to float32, nothing else changes.

Under bf16/fp16 autocast (or a teacher held in half precision) norms, attention maps and BCE logits would lose
too much in 16 bits, so the losses upcast them; float32 stays float32 and float64 stays float64 (a float64 run,
such as the golden parity tests against the official code, must not be rounded to float32 on the way).
"""

from __future__ import annotations

import torch

__all__ = ["HALF_DTYPES", "upcast_half"]

HALF_DTYPES = (torch.float16, torch.bfloat16)


def upcast_half(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is float16/bfloat16, else ``x`` unchanged (float32, float64)."""
    return x.float() if x.dtype in HALF_DTYPES else x
