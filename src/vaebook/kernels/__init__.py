r"""Triton kernels for the book's hot paths, each beside its plain-PyTorch reference (Appendix "GPU kernels").

=========================================  ============================================  ===========================
public op                                  what the Triton kernel does                   reference (``backend="torch"``)
=========================================  ============================================  ===========================
:func:`svgd_direction`, :func:`ksd`        tiled pairwise reduction (flash-attention      dense formula in
                                           style): never forms the ``n x n`` kernel        :mod:`.reference`
                                           matrix, one pass over the particles per tile
:func:`gumbel_softmax`                     fused noise + scale + softmax (+ one-hot),     :func:`vaebook.relaxed.gumbel_softmax`
                                           online softmax over long rows; its backward
                                           recomputes the sample
:func:`matched_kl`                         the matched bound between diagonal Gaussian    :func:`vaebook.mixtures.kl_gmm`
                                           mixtures, forward and backward in one kernel   (``method="matched"``)
                                           each
=========================================  ============================================  ===========================

**Backends: the one dispatch rule.** Every op here, and every library function on the book's hot paths, takes
``backend="auto" | "torch" | "triton"`` and resolves it with :func:`resolve_backend`:

* ``"torch"``: the PyTorch reference (any device, any dtype, autograd as usual).
* ``"triton"``: the Triton kernel. On CUDA tensors the compiled kernel; on CPU tensors only through the Triton
  *interpreter* (``TRITON_INTERPRET=1`` in the environment **before the first** ``import triton`` of the process;
  slow, for tests and teaching). Otherwise a :class:`BackendUnavailableError` (a ``RuntimeError``) says why.
* ``"auto"`` (default): Triton for CUDA tensors when triton can be imported, the reference otherwise (CPU tensors
  always take the reference, even under the interpreter: it is thousands of times faster there). On the CPU,
  ``"auto"`` is therefore exactly the PyTorch path the library had before it had kernels (the same numbers).

The library functions that follow this rule, and the kernel each one reaches:

* :func:`vaebook.svgd.svgd_direction` (and through it :class:`vaebook.svgd.SVGD`,
  :func:`vaebook.svgd.amortized_svgd_loss`, :class:`vaebook.svgd.AmortizedSVGD`, :class:`vaebook.ldc.LDCVAE`):
  the tiled SVGD-direction kernel, every particle set of a ``(..., n, d)`` batch in one launch (one grid column
  per set, each with its own bandwidth);
* :func:`vaebook.svgd.ksd`: the KSD row-sum kernel, likewise batched;
* :func:`vaebook.mixtures.kl_gmm` with ``method="matched"`` and ``matching="given"`` between mixtures of diagonal
  Gaussians (and through it :class:`vaebook.mixture_vae.GumbelMixtureVAE`; :class:`vaebook.vrnn.GMVRNN`
  ``variant="gumbel"`` calls :func:`matched_kl` itself): the fused matched-bound kernels, forward and backward;
* :func:`vaebook.relaxed.gumbel_softmax` (and through it :func:`vaebook.mixture_vae.relaxed_mixture_sample`,
  :class:`vaebook.discrete_vae.CategoricalLatent` / ``CategoricalVAE``, ``GumbelMixtureVAE``, ``GMVRNN``): the
  fused Gumbel-Softmax kernels, forward and backward.

Models take ``backend`` as a constructor argument (default ``"auto"``), keep it as the attribute ``backend`` (not
in the ``state_dict``, so checkpoints do not depend on it) and pass it to these functions. A model or function that
runs on a GPU therefore runs the kernels without being asked; ``backend="torch"`` forces the reference anywhere.
The kernel paths compute values and gradients equal to the reference up to the order of floating-point sums
(``tests/test_kernels.py``, ``tests/test_dispatch.py``); the SVGD and KSD kernels, like the SVGD direction itself,
are not differentiated through.

``import vaebook.kernels`` never imports triton: the kernel modules (``_triton_*.py``) are imported only when a
Triton launch is about to happen. Triton is the optional extra ``vaebook[gpu]`` (``triton==3.7.1``, the version
that torch 2.13 pairs with). Random ops take their noise (``gumbel=``) or a ``generator``; the noise is drawn once
in PyTorch and handed to whichever backend runs, so both backends can be compared on identical draws.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import torch

from . import reference

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "triton_available",
    "interpreter_enabled",
    "resolve_backend",
    "svgd_direction",
    "ksd",
    "gumbel_softmax",
    "matched_kl",
    "count_ops",
    "kernel_source",
    "reference",
]

BACKENDS = ("auto", "torch", "triton")


class BackendUnavailableError(RuntimeError):
    """``backend="triton"`` was asked for where no Triton kernel can run (no triton, no GPU, no interpreter)."""


def triton_available() -> bool:
    """Whether the ``triton`` package is installed (checked without importing it)."""
    if "triton" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("triton") is not None
    except (
        ImportError,
        ValueError,
    ):  # pragma: no cover - a broken installation
        return False


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET`` is set to a true value (Triton then runs kernels on the CPU through numpy)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
    )


def _tensors_device(tensors) -> str:
    types = {t.device.type for t in tensors if torch.is_tensor(t)}
    if len(types) > 1:
        raise ValueError(
            f"all tensors must be on one device, got {sorted(types)}"
        )
    return types.pop() if types else "cpu"


def _check_backend(backend) -> str:
    """``backend`` checked against :data:`BACKENDS` (for constructors that store it; it is resolved per call)."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(repr(b) for b in BACKENDS)}, "
            f"got {backend!r}"
        )
    return backend


def resolve_backend(backend: str, *tensors) -> str:
    """The backend that will run: ``"torch"`` or ``"triton"`` (see the module docstring for the rules).

    Raises:
        ValueError: ``backend`` is not one of :data:`BACKENDS`.
        BackendUnavailableError: ``backend="triton"`` where Triton cannot run.
    """
    _check_backend(backend)
    if backend == "torch":
        return "torch"
    device = _tensors_device(tensors)
    if backend == "auto":
        return "triton" if device == "cuda" and triton_available() else "torch"
    if not triton_available():
        raise BackendUnavailableError(
            "backend='triton' needs the triton package: pip install "
            "'vaebook[gpu]' (triton==3.7.1, Linux); "
            "use backend='torch' or 'auto' for the PyTorch reference"
        )
    if device == "cuda":
        return "triton"
    if not interpreter_enabled():
        raise BackendUnavailableError(
            f"backend='triton' got {device} tensors, but Triton kernels run "
            "only on a CUDA GPU or through the "
            "Triton interpreter; set TRITON_INTERPRET=1 before the first "
            "'import triton' of the process to "
            f"run them on the CPU (slow), or use backend='torch' or 'auto'"
        )
    if device != "cpu":
        raise BackendUnavailableError(
            f"the Triton interpreter runs on CPU tensors only, got {device} "
            "tensors"
        )
    return "triton"


def _kernels(name: str):
    """Import ``vaebook.kernels._triton_<name>`` (the only place where triton gets imported).

    Triton's own ``@jit`` helpers (``tl.sum``, ``tl.max``) are decorated when triton is first imported, so the
    interpreter works only if ``TRITON_INTERPRET=1`` was set before that; we check one of them.
    """
    mod = importlib.import_module(f"{__name__}._triton_{name}")
    if interpreter_enabled() and not _is_interpreted(
        importlib.import_module("triton.language.standard").sum
    ):
        raise BackendUnavailableError(
            "TRITON_INTERPRET=1 is set, but triton was imported before it was "
            "set, so its kernels were compiled "
            "for a GPU; set TRITON_INTERPRET=1 before anything imports triton "
            "(e.g. at the top of conftest.py, "
            "or in the shell), then restart the process"
        )
    return mod


def _is_interpreted(kernel) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


# -----------------------------------------------------------------------------
# SVGD direction and KSD
# -----------------------------------------------------------------------------
def _check_block(block, name="block"):
    if block is None:
        return None
    if (
        isinstance(block, bool)
        or not isinstance(block, int)
        or block < 1
        or block & (block - 1)
    ):
        raise ValueError(
            f"{name} must be a power of two >= 1 (a Triton block size) or "
            f"None, got {block!r}"
        )
    return block


def _particles(x, score):
    x, score = reference._check_particles(x, score)
    return x.contiguous(), score.contiguous()


def _svgd_direction_sets(
    x: torch.Tensor, score: torch.Tensor, h: torch.Tensor
) -> torch.Tensor:
    """The Triton SVGD direction for ``(..., n, d)`` particle sets with bandwidths ``h`` (shape ``x.shape[:-2]``):
    the path of :func:`vaebook.svgd.svgd_direction` when the backend resolves to ``"triton"`` (no autograd)."""
    n, d = x.shape[-2:]
    xs = x.detach().reshape(-1, n, d).contiguous()
    ss = score.detach().to(x.dtype).reshape(-1, n, d).contiguous()
    out = _kernels("svgd").svgd_direction(xs, ss, h.detach().reshape(-1), None)
    return out.reshape(x.shape)


def _ksd_sets(
    x: torch.Tensor, score: torch.Tensor, h: torch.Tensor, statistic: str
) -> torch.Tensor:
    """The Triton KSD for ``(..., n, d)`` particle sets with bandwidths ``h`` (shape ``x.shape[:-2]``): the path of
    :func:`vaebook.svgd.ksd` when the backend resolves to ``"triton"`` (no autograd). Returns ``x.shape[:-2]``."""
    n, d = x.shape[-2:]
    xs = x.detach().reshape(-1, n, d).contiguous()
    ss = score.detach().to(x.dtype).reshape(-1, n, d).contiguous()
    rows = _kernels("svgd").ksd_row_sums(
        xs, ss, h.detach().reshape(-1), statistic == "u", None
    )
    return (
        rows.sum(-1) / (n * (n - 1) if statistic == "u" else n * n)
    ).reshape(x.shape[:-2])


def svgd_direction(
    x,
    score,
    bandwidth=None,
    *,
    backend: str = "auto",
    block: int | None = None,
) -> torch.Tensor:
    r"""The SVGD direction :math:`\phi(x_i)=\frac1n\sum_j[k(x_j,x_i)s_j+\nabla_{x_j}k(x_j,x_i)]`, RBF kernel
    :math:`k(x,y)=\exp(-\|x-y\|^2/h)` (Chapter 6; Appendix "GPU kernels", eq. ``app-kern-phi``).

    The Triton kernel computes :math:`\phi_i=\frac1n\big[\sum_jk_{ij}(s_j-\tfrac2hx_j)+\tfrac2hx_i\sum_jk_{ij}\big]`
    tile by tile, without the ``(n, n)`` matrix; the reference is
    :func:`vaebook.kernels.reference.svgd_direction_reference` (dense), and :func:`vaebook.svgd.svgd_direction`
    (blocked PyTorch) gives the same numbers.

    Args:
        x: particles ``(n, d)``; score: :math:`\nabla\log p(x)` at the particles, ``(n, d)``.
        bandwidth: :math:`h>0`, or ``None`` for ``vaebook.svgd.median_bandwidth(x, rule="code")``.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``; block: Triton tile size (power of two; default by size).

    Returns:
        ``(n, d)``. Not differentiable on the Triton path (SVGD uses the direction, not its gradient).
    """
    x, score = _particles(x, score)
    _check_block(block)
    h = reference._bandwidth(x, bandwidth, "code")
    if resolve_backend(backend, x, score) == "torch":
        return reference._svgd_direction_dense(x, score, h)
    return _kernels("svgd").svgd_direction(
        x.detach(), score.detach(), h, block
    )


def ksd(
    x,
    score,
    bandwidth=None,
    *,
    statistic: str = "u",
    backend: str = "auto",
    block: int | None = None,
) -> torch.Tensor:
    r"""Squared kernelised Stein discrepancy with the RBF kernel :math:`\exp(-\|x-y\|^2/h)` (U- or V-statistic).

    The Triton kernel streams over particle tiles exactly like :func:`svgd_direction` and writes one partial sum
    per particle; the reference is :func:`vaebook.kernels.reference.ksd_reference` (dense), and
    :func:`vaebook.svgd.ksd` (blocked PyTorch) gives the same numbers.

    Args:
        x, score: ``(n, d)``; bandwidth: :math:`h>0` or ``None`` (``vaebook.svgd.median_bandwidth(x, rule="ksd")``);
        statistic: ``"u"`` (exclude ``i == j``, divide by :math:`n(n-1)`; default) or ``"v"`` (all pairs,
        divided by :math:`n^2`); backend, block: as in :func:`svgd_direction`.

    Returns:
        a 0-dim tensor. Not differentiable on the Triton path.
    """
    x, score = _particles(x, score)
    _check_block(block)
    n = x.shape[0]
    reference._check_statistic(statistic, n)
    h = reference._bandwidth(x, bandwidth, "ksd")
    if resolve_backend(backend, x, score) == "torch":
        return reference._ksd_dense(x, score, h, statistic)
    rows = _kernels("svgd").ksd_row_sums(
        x.detach(), score.detach(), h, statistic == "u", block
    )
    return rows.sum() / (n * (n - 1) if statistic == "u" else n * n)


# -----------------------------------------------------------------------------
# Gumbel-Softmax / Concrete with straight-through
# -----------------------------------------------------------------------------
class _GumbelSoftmaxTriton(torch.autograd.Function):
    """Forward and backward are Triton kernels; the soft sample is recomputed in the backward, never saved."""

    @staticmethod
    def forward(ctx, logits2d, gumbel2d, tau_rows, hard, block_k):
        mod = _kernels("gumbel")
        ctx.save_for_backward(logits2d, gumbel2d, tau_rows)
        ctx.block_k = block_k
        return mod.gumbel_softmax_fwd(
            logits2d, gumbel2d, tau_rows, hard, block_k
        )

    @staticmethod
    def backward(ctx, grad_out):
        logits2d, gumbel2d, tau_rows = ctx.saved_tensors
        mod = _kernels("gumbel")
        grad_logits, grad_tau_rows = mod.gumbel_softmax_bwd(
            logits2d, gumbel2d, tau_rows, grad_out.contiguous(), ctx.block_k
        )
        grad_tau = None
        if ctx.needs_input_grad[2]:
            grad_tau = (
                grad_tau_rows.sum().reshape(1)
                if tau_rows.numel() == 1
                else grad_tau_rows
            )
        return grad_logits, None, grad_tau, None, None


def gumbel_softmax(
    logits,
    tau,
    hard: bool = False,
    gumbel=None,
    generator: torch.Generator | None = None,
    *,
    backend: str = "auto",
    block_k: int | None = None,
) -> torch.Tensor:
    r"""Gumbel-Softmax / Concrete sample :math:`y=\mathrm{softmax}((\ell+g)/\tau)`, optionally straight-through.

    Same arguments, shapes and meaning as :func:`vaebook.relaxed.gumbel_softmax` (Chapter 3), which is the
    reference: ``hard=True`` returns the exact one-hot vector at :math:`\arg\max_k(\ell_k+g_k)` in the forward pass
    and the gradient of the soft sample in the backward pass. The Triton path fuses noise addition, scaling,
    softmax and one-hot in one kernel (online softmax for rows longer than ``block_k``) and its backward is a second
    kernel (gradients for ``logits`` and a tensor ``tau``; none for ``gumbel``).

    Args:
        logits: ``(..., K)``; tau: > 0, number or tensor broadcastable to ``logits.shape[:-1]``;
        hard: straight-through; gumbel: optional Gumbel(0, 1) noise broadcastable to ``(..., K)``; generator:
        optional ``torch.Generator`` used to draw the noise when ``gumbel`` is ``None`` (identical draws for both
        backends); backend: ``"auto"``, ``"torch"`` or ``"triton"``; block_k: Triton tile along K (power of two;
        default ``next_power_of_2(K)``, one tile per row).

    Returns:
        ``(..., K)``.
    """
    from .. import relaxed

    if resolve_backend(backend, logits, tau, gumbel) == "torch":
        return relaxed.gumbel_softmax(
            logits,
            tau,
            hard=hard,
            gumbel=gumbel,
            generator=generator,
            backend="torch",
        )
    _check_block(block_k, "block_k")
    logits = relaxed._as_logits(logits, allow_neg_inf=True)
    tau_t = relaxed._as_tau(tau, logits)
    g = relaxed._noise(logits, relaxed._event(tau_t), gumbel, generator)
    shape = torch.broadcast_shapes(
        logits.shape, g.shape, relaxed._event(tau_t).shape
    )
    batch, K = shape[:-1], shape[-1]
    logits2d = logits.expand(shape).reshape(-1, K).contiguous()
    g2d = g.to(logits.dtype).expand(shape).reshape(-1, K).contiguous()
    if tau_t.numel() == 1:
        tau_rows = tau_t.reshape(1)
    else:
        tau_rows = tau_t.expand(batch).reshape(-1).contiguous()
    y = _GumbelSoftmaxTriton.apply(
        logits2d, g2d, tau_rows, bool(hard), block_k
    )
    return y.reshape(shape)


# -----------------------------------------------------------------------------
# The matched bound between diagonal Gaussian mixtures
# -----------------------------------------------------------------------------
def _matched_shapes(q_logits, q_mean, q_logvar, p_logits, p_mean, p_logvar):
    ts = [
        torch.as_tensor(t)
        for t in (q_logits, q_mean, q_logvar, p_logits, p_mean, p_logvar)
    ]
    names = (
        "q_logits",
        "q_mean",
        "q_logvar",
        "p_logits",
        "p_mean",
        "p_logvar",
    )
    for i, (t, name) in enumerate(zip(ts, names)):
        need = 1 if i in (0, 3) else 2
        if t.dim() < need:
            raise ValueError(
                f"{name} must have shape "
                f"{'(..., K)' if need == 1 else '(..., K, D)'}, "
                f"got {tuple(t.shape)}"
            )
    K, D = ts[1].shape[-2], ts[1].shape[-1]
    for i, (t, name) in enumerate(zip(ts, names)):
        tail = (K,) if i in (0, 3) else (K, D)
        if tuple(t.shape[-len(tail) :]) != tail:
            raise ValueError(
                f"{name} must end in {tail} (K={K} components, D={D} "
                "dimensions, from q_mean), "
                f"got shape {tuple(t.shape)}"
            )
    try:
        batch = torch.broadcast_shapes(
            *[
                t.shape[:-1] if i in (0, 3) else t.shape[:-2]
                for i, t in enumerate(ts)
            ]
        )
    except RuntimeError:
        raise ValueError(
            "the batch shapes of the six inputs do not broadcast: "
            + ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(names, ts))
        ) from None
    return ts, batch, K, D


def _rows(t: torch.Tensor, batch, tail) -> torch.Tensor:
    """``t`` expanded to ``batch + tail`` and viewed as ``(B, *tail)`` with a contiguous tail (row stride may be 0)."""
    r = t.expand(*batch, *tail).reshape(-1, *tail)
    inner = (1,) if len(tail) == 1 else (tail[1], 1)
    if tuple(r.stride()[1:]) != inner and r.numel():
        r = r.contiguous()
    return r


class _MatchedKLTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, batch, K, D, block_b, *tensors):
        mod = _kernels("matched")
        rows = [
            _rows(t, batch, (K,) if i in (0, 3) else (K, D))
            for i, t in enumerate(tensors)
        ]
        ctx.save_for_backward(*rows)
        ctx.meta = (batch, K, D, block_b, [t.shape for t in tensors])
        return mod.matched_kl_fwd(rows, block_b).reshape(batch)

    @staticmethod
    def backward(ctx, grad_out):
        batch, K, D, block_b, shapes = ctx.meta
        mod = _kernels("matched")
        grads = mod.matched_kl_bwd(
            list(ctx.saved_tensors), grad_out.reshape(-1), block_b
        )
        out = []
        for i, (g, shape) in enumerate(zip(grads, shapes)):
            if not ctx.needs_input_grad[4 + i]:
                out.append(None)
                continue
            tail = (K,) if i in (0, 3) else (K, D)
            out.append(
                g.reshape(*batch, *tail).sum_to_size(shape)
            )  # a shared prior sums over the batch
        return (None, None, None, None, *out)


def matched_kl(
    q_logits,
    q_mean,
    q_logvar,
    p_logits,
    p_mean,
    p_logvar,
    *,
    backend: str = "auto",
    block_b: int | None = None,
) -> torch.Tensor:
    r"""The matched bound (identity matching) between diagonal Gaussian mixtures, batched and differentiable.

    .. math:: D_{\mathrm{match}}(q\,\|\,p)=\sum_k\pi^q_k\Big[\mathrm{KL}\big(\mathcal N(\mu^q_k,\sigma^{q2}_k)
              \,\|\,\mathcal N(\mu^p_k,\sigma^{p2}_k)\big)+\log\frac{\pi^q_k}{\pi^p_k}\Big]\ \ge\ \mathrm{KL}(q\,\|\,p)

    (Chapter 2, the KL term of :class:`vaebook.mixture_vae.GumbelMixtureVAE`). The reference is
    ``kl_gmm(q, p, method="matched")`` (:func:`vaebook.kernels.reference.matched_kl_reference`); the Triton path
    computes it, and its gradient, in one kernel each (Appendix "GPU kernels", eq. ``app-kern-matched-grad``).

    Args:
        q_logits: ``(..., K)`` mixture logits of q (finite; normalised inside); q_mean, q_logvar: ``(..., K, D)``.
        p_logits, p_mean, p_logvar: the same for p, broadcastable (a shared prior: ``(K,)``, ``(K, D)``, ``(K, D)``).
        backend: ``"auto"``, ``"torch"`` or ``"triton"``; block_b: rows per Triton program (power of two).

    Returns:
        the broadcast batch shape ``(...)``.
    """
    ts, batch, K, D = _matched_shapes(
        q_logits, q_mean, q_logvar, p_logits, p_mean, p_logvar
    )
    if resolve_backend(backend, *ts) == "torch":
        return reference.matched_kl_reference(*ts)
    _check_block(block_b, "block_b")
    dtype = ts[0].dtype
    for t in ts[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    ts = [t.to(dtype) for t in ts]
    return _MatchedKLTriton.apply(tuple(batch), K, D, block_b, *ts)


# -----------------------------------------------------------------------------
# teaching helpers (no triton needed)
# -----------------------------------------------------------------------------
def count_ops(fn, *args, **kwargs) -> dict:
    """Run ``fn(*args, **kwargs)`` and count the PyTorch operators it launches and the bytes of their outputs.

    Returns ``{"result": ..., "ops": number of aten operators, "bytes_written": total bytes of the tensors they
    produced}``: a proxy for the memory traffic of an unfused implementation (each operator is at least one kernel
    that writes its output to memory and has it read back by the next one). Views count as operators but write
    nothing. Counted with a ``TorchDispatchMode``, so it works on the CPU.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class _Counter(TorchDispatchMode):
        ops = 0
        nbytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            _Counter.ops += 1
            if (
                not func._schema.is_mutable
                and "view" not in func.__name__
                and func.__name__.split(".")[0]
                not in (
                    "expand",
                    "reshape",
                    "unsqueeze",
                    "squeeze",
                    "transpose",
                    "t",
                    "permute",
                    "select",
                    "slice",
                    "detach",
                    "alias",
                    "as_strided",
                    "unbind",
                    "split",
                    "split_with_sizes",
                    "diagonal",
                )
            ):
                _Counter.nbytes += sum(
                    t.numel() * t.element_size()
                    for t in tree_leaves(out)
                    if torch.is_tensor(t)
                )
            return out

    with _Counter():
        result = fn(*args, **kwargs)
    return {
        "result": result,
        "ops": _Counter.ops,
        "bytes_written": _Counter.nbytes,
    }


def kernel_source(name: str) -> str:
    """The source of the Triton kernel or helper ``name`` from the ``_triton_*.py`` files, read as text (so it
    works where triton is not installed)."""
    import ast
    import pathlib

    for path in sorted(pathlib.Path(__file__).parent.glob("_triton_*.py")):
        text = path.read_text()
        for node in ast.parse(text).body:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                lines = text.splitlines()
                start = (
                    min(
                        [d.lineno for d in node.decorator_list] + [node.lineno]
                    )
                    - 1
                )
                return "\n".join(lines[start : node.end_lineno])
    names = sorted(
        node.name
        for path in pathlib.Path(__file__).parent.glob("_triton_*.py")
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef)
    )
    raise ValueError(
        f"no function {name!r} in vaebook/kernels/_triton_*.py: name must be "
        f"one of {names}"
    )
