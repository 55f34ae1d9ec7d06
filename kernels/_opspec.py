"""One spec per op: :class:`KernelOp` generates an op's ``flopkit::`` custom op and its eager path.

A public op (``norm.py``, ``rope.py``) decides its call's route once (:func:`._dispatch.route`) and
calls :meth:`KernelOp.eager` (:data:`~._dispatch.KERNEL`) or :attr:`KernelOp.via_op`
(:data:`~._dispatch.CUSTOM_OP`). Both run the spec's functions: the kernel launch, the autograd
setup and backward. The op families (``_norm_ops.py``, ``_rope_ops.py``) hold the specs; this module
holds everything ``torch.library`` and ``torch.autograd`` need, once. Importing it imports triton
(``_norm_triton.wrapped``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from ._dispatch import runs_reference_in_op
from ._launch import launch
from ._norm_triton import wrapped

__all__ = ["KernelOp"]


_ANNOTATIONS = {
    "Tensor": torch.Tensor,
    "Optional[Tensor]": torch.Tensor | None,
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
}


def _annotation(name: str, schema_type: Any) -> Any:
    try:
        return _ANNOTATIONS[str(schema_type)]
    except KeyError:
        raise ValueError(f"{name}: KernelOp specs take {sorted(_ANNOTATIONS)}, not {schema_type}") from None


def _signature(name: str, schema: str) -> inspect.Signature:
    """The Python signature whose inferred ``torch.library`` schema is ``schema`` (``"(Tensor x,
    ...) -> Tensor"``): how :class:`KernelOp` registers one generic body under each op's schema."""
    parsed = torch._C.parse_schema(name + schema)
    params = []
    for a in parsed.arguments:
        default = a.default_value if a.has_default_value() else inspect.Parameter.empty
        kind = inspect.Parameter.KEYWORD_ONLY if a.kwarg_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
        params.append(inspect.Parameter(a.name, kind, default=default, annotation=_annotation(name, a.type)))
    returns = [_annotation(name, r.type) for r in parsed.returns]
    ret = returns[0] if len(returns) == 1 else tuple[tuple(returns)]
    return inspect.Signature(params, return_annotation=ret)


class KernelOp:
    """One op, one spec: the ``flopkit::`` custom op and the eager path generated from the same
    functions, so that no op is written twice.

    The spec, every function taking the op's schema arguments ``*args`` in schema order:

    - ``forward(*args, run)``: launch the kernel(s) and return the op's outputs. The custom op's body
      calls it with ``run=wrapped`` (``wrap_triton``: Inductor launches the kernels from its own
      code); the eager path with ``run=launch`` (cached plans, direct launch, ``_launch.py``).
    - ``reference(*args)``: the same outputs from the PyTorch reference, which the custom op's body
      runs on a CPU tensor with no kernel to run (:func:`runs_reference_in_op`).
    - ``fake(*args)``: empty outputs of the right shapes, dtypes and strides (meta, FakeTensor).
    - ``flops(*arg_shapes, out_shape=None, **kwargs)``: the FLOP formula, registered with
      ``torch.utils.flop_counter`` (it calls :mod:`flopkit.formulas`).
    - ``setup(ctx, inputs, output)`` and ``backward(ctx, *grads)`` (optional): the autograd,
      registered on the custom op and used unchanged as the eager ``autograd.Function``'s. The
      generator sets ``ctx.eager`` first: True on the eager path, where ``backward`` launches the
      backward kernel directly, False through the custom op, where it calls the backward op.
    - ``views(args, eager)`` (optional): outputs that are views of inputs, which a custom op may not
      return (the fused QK-norm + RoPE's ``v``); both paths append them, and ``backward`` receives
      their gradients (None through the op's own autograd).

    Generated: :attr:`op` (the ``triton_op`` with its fake, autograd and FLOP formula),
    :attr:`function` (the eager ``autograd.Function``), :attr:`eager` (the :data:`KERNEL` route's
    entry) and :attr:`via_op` (the :data:`CUSTOM_OP` route's entry: the op itself, or with views
    :attr:`op_function`, the op and its views under one backward). The public op decides the route
    once (:func:`route`) and calls one of the two entries. A spec without autograd (a backward op)
    gets the op only.
    """

    def __init__(
        self,
        name: str,
        schema: str,
        *,
        forward: Callable[..., Any],
        reference: Callable[..., Any],
        fake: Callable[..., Any],
        flops: Callable[..., int] | None = None,
        setup: Callable[..., None] | None = None,
        backward: Callable[..., tuple] | None = None,
        views: Callable[[tuple, bool], tuple] | None = None,
        materialize_grads: bool = True,
    ) -> None:
        from torch.library import triton_op
        from torch.utils.flop_counter import register_flop_formula

        self.name, self.schema = name, schema
        self.forward, self.reference, self.fake, self.flops = forward, reference, fake, flops
        self.setup, self.backward, self.views = setup, backward, views

        def body(*args: Any) -> Any:
            if runs_reference_in_op(args[0]):
                return reference(*args)
            return forward(*args, run=wrapped)

        body.__name__ = body.__qualname__ = name.split("::")[-1]
        # triton_op infers the schema from the body's signature: give it the spec's, then check.
        body.__signature__ = _signature(name, schema)
        op = triton_op(name, body, mutates_args=())
        if str(op._opoverload._schema) != name + schema:  # e.g. "int" where torch writes "SymInt"
            raise ValueError(f"{name}: registered as {op._opoverload._schema}, the spec says {schema}")
        op.register_fake(fake)
        namespace, short = name.split("::")
        overloads = getattr(getattr(torch.ops, namespace), short)
        if flops is not None:
            register_flop_formula(overloads)(flops)
        self.op = op
        # Positions of the Tensor arguments: the eager path checks them for requires_grad.
        tensor_args = tuple(
            i
            for i, a in enumerate(overloads.default._schema.arguments)
            if isinstance(a.type, torch.TensorType)
            or (
                isinstance(a.type, torch.OptionalType)
                and isinstance(a.type.getElementType(), torch.TensorType)
            )
        )
        self.tensor_args = tensor_args
        self.function: type[torch.autograd.Function] | None = None
        self.op_function: type[torch.autograd.Function] | None = None
        self.eager: Callable[..., Any] | None = None
        self.via_op: Callable[..., Any] = op
        if setup is None or backward is None:
            # A backward op: its forward op's backward calls it (through the op) or, eager, its
            # launcher (``forward``) directly.
            return

        def op_setup(ctx: Any, inputs: tuple, output: Any) -> None:
            ctx.eager = False
            setup(ctx, inputs, output)

        op.register_autograd(backward, setup_context=op_setup)

        class Eager(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, *args: Any) -> Any:
                out = forward(*args, run=launch)
                ctx.eager = True
                if not materialize_grads:
                    # An unused output's gradient arrives as None, not as a tensor of zeros.
                    ctx.set_materialize_grads(False)
                setup(ctx, args, out)
                return out if views is None else (*out, *views(args, True))

        Eager.backward = staticmethod(backward)
        Eager.__name__ = Eager.__qualname__ = f"{short}_eager"
        self.function = Eager
        # Function.apply's C++ half: the Python wrapper only binds default arguments (forward has
        # none) and handles functorch transforms, about 1.5 µs of host time a call.
        c_apply = torch._C._FunctionBase.__dict__["apply"].__get__(None, Eager)
        functorch_active = torch._C._are_functorch_transforms_active
        grad_enabled = torch.is_grad_enabled

        def eager(*args: Any) -> Any:
            # Through the autograd Function only when a gradient is needed: Function.apply alone
            # costs several microseconds of host time.
            if grad_enabled():
                for i in tensor_args:
                    t = args[i]
                    if t is not None and t.requires_grad:
                        return Eager.apply(*args) if functorch_active() else c_apply(*args)
            out = forward(*args, run=launch)
            return out if views is None else (*out, *views(args, True))

        self.eager = eager
        if views is None:
            return

        class ThroughOp(torch.autograd.Function):
            """The op with its views: the op (no autograd inside a Function's forward) plus the
            views, one backward for all outputs (the views' gradients go into the same kernel)."""

            @staticmethod
            def forward(ctx: Any, *args: Any) -> Any:
                out = op(*args)
                ctx.eager = False
                setup(ctx, args, out)
                return (*out, *views(args, False))

        ThroughOp.backward = staticmethod(backward)
        ThroughOp.__name__ = ThroughOp.__qualname__ = f"{short}_through_op"
        self.op_function = ThroughOp

        def via_op(*args: Any) -> Any:
            tensors = [args[i] for i in tensor_args if args[i] is not None]
            # Dynamo cannot trace an autograd.Function given one tensor twice; the op's own autograd
            # can (a view's gradient then reaches its base through the view).
            if (
                torch.is_grad_enabled()
                and any(t.requires_grad for t in tensors)
                and not any(a is b for i, a in enumerate(tensors) for b in tensors[i + 1 :])
            ):
                return ThroughOp.apply(*args)
            out = op(*args)
            return (*out, *views(args, False))

        self.via_op = via_op

    def __repr__(self) -> str:
        return f"KernelOp({self.name!r})"
