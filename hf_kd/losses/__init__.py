"""Loss functions, one module per method: pure functions of tensors, each citing the equation it implements."""

from .kd import kd_kl_div

__all__ = ["kd_kl_div"]
