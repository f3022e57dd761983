"""Generative routing of matrix capsules (Heinsen, 2019, "An Algorithm for Routing Capsules in All Domains").

Each input capsule i is an activation logit ``a_inp[i]`` plus a pose matrix ``mu_inp[i]`` of shape
``[d_cov, d_inp]``. Every input casts a vote ``V[i, j] = mu_inp[i] @ W[i, j] + B[i, j]`` (``[d_cov, d_out]``) for
each output capsule j. An EM-like loop then fits, for every output, a diagonal Gaussian (``mu_out``,
``sig2_out``) to the votes it "uses", and an activation logit ``a_out`` that adds the net benefit (``beta_use``)
and cost (``beta_ign``) of using or ignoring each input's data (SPEC §3).

Example:
    >>> import torch
    >>> from heinsen_routing.generative import GenerativeMatrixRouting
    >>> routing = GenerativeMatrixRouting(n_inp=-1, n_out=3, d_cov=4, d_inp=4, d_out=2)
    >>> a_inp = torch.randn(8, 10)            # [batch, n]
    >>> mu_inp = torch.randn(8, 10, 4, 4)     # [batch, n, d_cov, d_inp]
    >>> a_out, mu_out, sig2_out = routing(a_inp, mu_inp)
    >>> a_out.shape, mu_out.shape, sig2_out.shape
    (torch.Size([8, 3]), torch.Size([8, 3, 4, 2]), torch.Size([8, 3, 4, 2]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .validation import (
    autocast_enabled,
    check_dim,
    check_finite,
    check_floating,
    check_nonempty,
    check_rank,
    checks_enabled,
)

__all__ = ["GenerativeMatrixRouting"]

P_MODELS = ("gaussian", "skm")


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


class GenerativeMatrixRouting(nn.Module):
    """Route ``n`` input matrix capsules to ``n_out`` output matrix capsules (SPEC §3).

    Args:
        n_inp: number of input capsules, or -1 for any number (parameters then shared by all inputs).
        n_out: number of output capsules (>= 1).
        d_cov: rows of every pose matrix (the "covector" size, shared by inputs and outputs).
        d_inp: columns of each input pose.
        d_out: columns of each output pose.
        n_iters: routing iterations (>= 1); the first uses uniform routing probabilities.
        single_beta: if True, ``beta_ign`` is the same Parameter object as ``beta_use``.
        p_model: ``'gaussian'`` (log-density of the votes under each output's diagonal Gaussian) or
            ``'skm'`` (soft k-means: log-softmax over outputs of minus the squared vote distances).
        eps: small constant added to the routed-data totals and to the variances.
        return_dict: if True, ``forward`` returns a dict with the final iteration's intermediate values.

    Parameters (state-dict names; ``n1 = max(1, n_inp)``): ``W`` [n1, n_out, d_inp, d_out] (standard
    normal / d_inp), ``B`` [n1, n_out, d_cov, d_out] (zeros), ``beta_use`` and ``beta_ign`` [n1, n_out]
    (zeros), and the buffer ``CONST_one`` (1.0).

    Forward:
        a_inp: ``[..., n]`` activation logits (floating). ``±inf`` is allowed and means an activation of
            exactly 1 or 0 (e.g. the logit of a 0/1 token mask); NaN is rejected.
        mu_inp: ``[..., n, d_cov, d_inp]`` input poses (finite, same dtype and device as ``a_inp``, except
            that under autocast ``a_inp`` may stay float32 while the poses are bf16/fp16; the
            leading dims ``...`` must equal those of ``a_inp`` exactly, nothing is broadcast).

    Returns:
        ``(a_out [..., n_out], mu_out [..., n_out, d_cov, d_out], sig2_out [..., n_out, d_cov, d_out])``, or
        with ``return_dict`` a dict with keys ``V`` [..., n, n_out, d_cov, d_out], ``log_p``
        [..., n, n_out] (None when ``n_iters == 1``), ``R``, ``D_use``, ``D_ign`` [..., n, n_out],
        ``a_out``, ``mu_out``, ``sig2_out``.

    Example:
        >>> import torch
        >>> routing = GenerativeMatrixRouting(n_inp=5, n_out=2, d_cov=1, d_inp=3, d_out=2, return_dict=True)
        >>> out = routing(torch.zeros(5), torch.randn(5, 1, 3))
        >>> sorted(out)
        ['D_ign', 'D_use', 'R', 'V', 'a_out', 'log_p', 'mu_out', 'sig2_out']
        >>> out["R"].sum(-1).allclose(torch.ones(5))
        True
    """

    def __init__(
        self,
        n_inp: int,
        n_out: int,
        d_cov: int,
        d_inp: int,
        d_out: int,
        n_iters: int = 3,
        single_beta: bool = False,
        p_model: str = "gaussian",
        eps: float = 1e-5,
        return_dict: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(n_inp, bool) or not isinstance(n_inp, int) or not (n_inp > 0 or n_inp == -1):
            raise ValueError(f"n_inp: expected an int > 0 or -1 (any number of inputs), got {n_inp!r}")
        _check_positive_int("n_out", n_out)
        _check_positive_int("d_cov", d_cov)
        _check_positive_int("d_inp", d_inp)
        _check_positive_int("d_out", d_out)
        _check_positive_int("n_iters", n_iters)
        if p_model not in P_MODELS:
            raise ValueError(f"p_model: expected one of {P_MODELS}, got {p_model!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps: expected a float > 0, got {eps!r}")

        self.n_inp, self.n_out = n_inp, n_out
        self.d_cov, self.d_inp, self.d_out = d_cov, d_inp, d_out
        self.n_iters, self.single_beta, self.p_model = n_iters, bool(single_beta), p_model
        self.eps, self.return_dict = float(eps), bool(return_dict)

        n1 = max(1, n_inp)
        self.W = nn.Parameter(torch.randn(n1, n_out, d_inp, d_out) / d_inp)
        self.B = nn.Parameter(torch.zeros(n1, n_out, d_cov, d_out))
        self.beta_use = nn.Parameter(torch.zeros(n1, n_out))
        self.beta_ign = self.beta_use if self.single_beta else nn.Parameter(torch.zeros(n1, n_out))
        self.register_buffer("CONST_one", torch.tensor(1.0))

    def extra_repr(self) -> str:
        return (
            f"n_inp={self.n_inp}, n_out={self.n_out}, d_cov={self.d_cov}, d_inp={self.d_inp}, "
            f"d_out={self.d_out}, n_iters={self.n_iters}, single_beta={self.single_beta}, "
            f"p_model={self.p_model!r}, eps={self.eps}, return_dict={self.return_dict}"
        )

    def _check_inputs(self, a_inp: object, mu_inp: object) -> None:
        a_inp = check_floating("a_inp", a_inp)
        mu_inp = check_floating("mu_inp", mu_inp)
        check_rank("a_inp", a_inp, 1, "[..., n]")
        check_rank("mu_inp", mu_inp, 3, "[..., n, d_cov, d_inp]")
        check_dim("mu_inp", mu_inp, -2, self.d_cov, "d_cov", "[..., n, d_cov, d_inp]")
        check_dim("mu_inp", mu_inp, -1, self.d_inp, "d_inp", "[..., n, d_cov, d_inp]")
        if a_inp.shape[:-1] != mu_inp.shape[:-3] or a_inp.shape[-1] != mu_inp.shape[-3]:
            raise ValueError(
                "a_inp and mu_inp: expected shapes [..., n] and [..., n, d_cov, d_inp] with the same leading "
                f"dims and n, got a_inp {list(a_inp.shape)} and mu_inp {list(mu_inp.shape)}"
            )
        check_nonempty("mu_inp", mu_inp, -3, "input capsule (n >= 1)")
        if self.n_inp > 0:
            check_dim("mu_inp", mu_inp, -3, self.n_inp, "n (the layer's n_inp)", "[..., n, d_cov, d_inp]")
        if a_inp.device != mu_inp.device:
            raise ValueError(f"a_inp: expected device {mu_inp.device} (that of mu_inp), got {a_inp.device}")
        if a_inp.dtype != mu_inp.dtype and not autocast_enabled(mu_inp.device.type):
            # Under autocast the logits may legitimately stay float32 while the poses are bf16/fp16.
            raise TypeError(
                f"a_inp: expected dtype {mu_inp.dtype} (that of mu_inp; or run under autocast), got {a_inp.dtype}"
            )
        if mu_inp.device != self.W.device:
            raise ValueError(
                f"mu_inp: expected device {self.W.device} (the layer's parameters), got {mu_inp.device}"
            )
        if mu_inp.dtype != self.W.dtype and not autocast_enabled(mu_inp.device.type):
            raise TypeError(
                f"mu_inp: expected dtype {self.W.dtype} (the layer's parameters; or run under autocast), "
                f"got {mu_inp.dtype}"
            )
        if checks_enabled():
            n_nan = int(torch.isnan(a_inp).sum())
            if n_nan:
                raise ValueError(
                    f"a_inp: expected no NaN (±inf logits are allowed: activation 1 or 0), found {n_nan} NaN entries"
                )
        check_finite("mu_inp", mu_inp)

    def forward(
        self, a_inp: torch.Tensor, mu_inp: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | dict[str, torch.Tensor | None]:
        """Route ``a_inp`` [..., n] and ``mu_inp`` [..., n, d_cov, d_inp]; see the class docstring."""
        self._check_inputs(a_inp, mu_inp)
        lead, n = mu_inp.shape[:-3], mu_inp.shape[-3]
        n_out, d_cov, d_inp, d_out = self.n_out, self.d_cov, self.d_inp, self.d_out
        k = d_cov * d_out  # pose entries, flattened

        # Internally everything is laid out output-major ("ji"), so that every sum over inputs is a batched
        # matrix product over contiguous memory: votes V [..., n_out, n, d_cov·d_out].
        if self.n_inp == -1:
            W = self.W[0].permute(1, 0, 2).reshape(d_inp, n_out * d_out)  # [d_inp, n_out·d_out]
            V = (mu_inp.reshape(*lead, n * d_cov, d_inp) @ W).reshape(*lead, n, d_cov, n_out, d_out)
            # In place (mm does not need its output); B[0] as [d_cov, n_out, d_out].
            V = V.add_(self.B[0].transpose(0, 1))
            V = V.permute(*range(len(lead)), -2, -4, -3, -1)  # [..., n_out, n, d_cov, d_out]
        else:
            W = self.W.transpose(0, 1)  # [n_out, n, d_inp, d_out]
            V = mu_inp.unsqueeze(-4) @ W + self.B.transpose(0, 1)  # [..., n_out, n, d_cov, d_out]
        V = V.reshape(*lead, n_out, n, k)  # [..., n_out, n, k]
        if not autocast_enabled(mu_inp.device.type):
            return self._em(a_inp, V, lead, n)
        # Under autocast only the votes (the n·n_out·d_inp·d_out product above) run in the autocast dtype;
        # the EM statistics (means, variances, log-densities, softmax) run in float32 (or the widest dtype of
        # the votes, the parameters and a_inp), with autocast off so that their sums are not rounded to bf16.
        work = torch.promote_types(torch.promote_types(V.dtype, self.W.dtype), a_inp.dtype)
        with torch.autocast(mu_inp.device.type, enabled=False):
            return self._em(a_inp.to(work), V.to(work), lead, n)

    def _em(
        self, a_inp: torch.Tensor, V: torch.Tensor, lead: torch.Size, n: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | dict[str, torch.Tensor | None]:
        """The EM loop on the votes V [..., n_out, n, d_cov·d_out] (SPEC §3)."""
        n_out, d_cov, d_out = self.n_out, self.d_cov, self.d_out
        f_a_inp = torch.sigmoid(a_inp).unsqueeze(-2).to(V.dtype)  # [..., 1, n]
        beta_use, beta_ign = self.beta_use.t(), self.beta_ign.t()  # [n_out, n1]

        # E-step of the first iteration: uniform routing probabilities R [..., n_out, n].
        R = (self.CONST_one / n_out).to(V.dtype).expand(*lead, n_out, n)
        log_p = None
        for t in range(self.n_iters):
            # D-step: data used and ignored by each output.
            D_use = f_a_inp * R  # [..., n_out, n]
            D_ign = f_a_inp - D_use  # [..., n_out, n]

            # M-step: output activations, poses and variances.
            a_out = (beta_use * D_use).sum(dim=-1) - (beta_ign * D_ign).sum(dim=-1)  # [..., n_out]
            # weights [..., n_out, 1, n]
            weights = (D_use / (D_use.sum(dim=-1, keepdim=True) + self.eps)).unsqueeze(-2)
            mu_out = (weights @ V).squeeze(-2)  # [..., n_out, k]
            V_less_mu_out = V - mu_out.unsqueeze(-2)  # [..., n_out, n, k]
            # Square in place when no gradient is needed (saves one [..., n_out, n, k] buffer in inference).
            V_less_mu_out_2 = (
                V_less_mu_out.square_() if not V_less_mu_out.requires_grad else V_less_mu_out.square()
            )
            sig2_out = (weights @ V_less_mu_out_2).squeeze(-2) + self.eps  # [..., n_out, k]

            # E-step of the next iteration: R = softmax over outputs of logσ(a_out) + log_p.
            if t + 1 < self.n_iters:
                if self.p_model == "gaussian":
                    log_p = (
                        -(V_less_mu_out_2 @ (0.5 / sig2_out).unsqueeze(-1)).squeeze(-1)  # [..., n_out, n]
                        - 0.5 * torch.log(sig2_out).sum(dim=-1, keepdim=True)  # [..., n_out, 1]
                    )
                else:  # soft k-means
                    log_p = torch.log_softmax(-V_less_mu_out_2.sum(dim=-1), dim=-2)  # [..., n_out, n]
                R = torch.softmax(F.logsigmoid(a_out).unsqueeze(-1) + log_p, dim=-2)

        mu_out = mu_out.reshape(*lead, n_out, d_cov, d_out)
        sig2_out = sig2_out.reshape(*lead, n_out, d_cov, d_out)
        if self.return_dict:
            # Back to the documented input-major layouts (views, no copies).
            return {
                # [..., n, n_out, d_cov, d_out]
                "V": V.reshape(*lead, n_out, n, d_cov, d_out).transpose(-4, -3),
                "log_p": None if log_p is None else log_p.transpose(-2, -1),  # [..., n, n_out]
                "R": R.transpose(-2, -1),
                "D_use": D_use.transpose(-2, -1),
                "D_ign": D_ign.transpose(-2, -1),
                "a_out": a_out,
                "mu_out": mu_out,
                "sig2_out": sig2_out,
            }
        return a_out, mu_out, sig2_out
