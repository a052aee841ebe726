"""Analytic FLOP counts of the matrix products in a JAX function.

We count what the benchmark compares against the machine's matmul peak: the multiply-adds of every
`dot_general` (dense layers, tied/transposed kernels, einsums), 2 FLOPs each, read off the traced
jaxpr's shapes. For a dense layer x [B, in] @ W [in, out] that is exactly 2 * B * in * out.
Elementwise work (biases, GELU, sigmoid, scaling) is not counted; on every architecture here it
is < 2% of the dot FLOPs, and peak matmul throughput is the meaningful ceiling.

Sub-jaxprs are followed: `jit`/`pjit`, custom_jvp/vjp calls and remat bodies once, `scan` bodies
`length` times, and `cond` with its most expensive branch. `while` loops have no static trip count
and raise, so a count can never silently miss work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jex_core


def dot_general_flops(lhs_shape, rhs_shape, dimension_numbers) -> int:
    """FLOPs of one dot_general: 2 * (output size) * (product of the contracting dims)."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    contract = math.prod(int(lhs_shape[d]) for d in lhs_contract)
    batch = math.prod(int(lhs_shape[d]) for d in lhs_batch)
    lhs_free = math.prod(
        int(s) for d, s in enumerate(lhs_shape) if d not in lhs_contract and d not in lhs_batch
    )
    rhs_free = math.prod(
        int(s) for d, s in enumerate(rhs_shape) if d not in rhs_contract and d not in rhs_batch
    )
    return 2 * batch * lhs_free * rhs_free * contract


def _sub_jaxprs(value: Any):
    """Jaxprs held (directly or in a tuple/list) by an equation parameter."""
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _sub_jaxprs(v)


def jaxpr_dot_flops(jaxpr) -> int:
    """Sum of dot_general FLOPs in a (closed) jaxpr, following sub-jaxprs (module docstring)."""
    if isinstance(jaxpr, jex_core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
            total += dot_general_flops(lhs, rhs, eqn.params["dimension_numbers"])
            continue
        if name == "while":
            inner = sum(
                jaxpr_dot_flops(j)
                for key in ("body_jaxpr", "cond_jaxpr")
                for j in _sub_jaxprs(eqn.params.get(key))
            )
            if inner:
                raise ValueError(
                    "jaxpr_dot_flops: a while loop contains matrix products; its trip count is "
                    "not static, so FLOPs cannot be counted analytically"
                )
            continue
        if name == "cond":
            total += max((jaxpr_dot_flops(j) for j in _sub_jaxprs(eqn.params["branches"])),
                         default=0)
            continue
        inner = sum(jaxpr_dot_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
        if name == "scan":
            inner *= int(eqn.params["length"])
        total += inner
    return total


def count_dot_flops(fn: Callable, *args, **kwargs) -> int:
    """Matrix-product FLOPs of one call `fn(*args, **kwargs)` (args may be arrays or
    `jax.ShapeDtypeStruct`s; nothing is computed)."""
    return jaxpr_dot_flops(jax.make_jaxpr(fn)(*args, **kwargs))


def dense_flops(layer_widths) -> int:
    """Reference formula for a chain of dense layers on one sample: sum of 2 * in * out.

    layer_widths: (in, h1, ..., out).
    """
    widths = [int(w) for w in layer_widths]
    return sum(2 * a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
