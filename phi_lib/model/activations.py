"""The MLP nonlinearities the phi configs name (`hidden_act`)."""
from __future__ import annotations

import torch.nn.functional as F


def activation(name: str):
    """The MLP nonlinearity named by `hidden_act`."""
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        # the tanh approximation in one fused kernel (transformers spells it out in 6 ops)
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    if name == "silu":
        return F.silu
    raise ValueError(f"hidden_act {name!r} is not supported (gelu_new, gelu, silu)")
