"""Plain, literal float64 reference implementations of SPEC.md §1–§4, written from the spec alone.

This is a helper module, not a test file (pytest does not collect it). Tests load it with
:func:`importlib.util.spec_from_file_location` (pytest runs with ``--import-mode=importlib``, so a
plain ``import reference`` would not work), e.g.::

    spec = importlib.util.spec_from_file_location("hr_reference", Path(__file__).with_name("reference.py"))

Everything here favours obviousness over speed: votes ``V`` are always materialised by a literal
einsum over ``i, j, d, h``, iterations are an explicit Python loop, and every parameter is looked up
by its state_dict name (so the names in SPEC.md are checked as a side effect).

Example:
    >>> import torch
    >>> p = {"W_A": torch.randn(3, 2), "B_A": torch.zeros(3), "W_F1": torch.randn(2, 2),
    ...      "W_F2": torch.randn(2, 1), "B_F2": torch.zeros(2, 1), "W_G1": torch.randn(1, 2),
    ...      "W_G2": torch.randn(2, 2), "B_G2": torch.zeros(2, 2), "W_S": torch.randn(3, 2),
    ...      "B_S": torch.zeros(3, 2), "beta_use": torch.randn(3, 2), "beta_ign": torch.randn(3, 2)}
    >>> efficient_reference(p, torch.randn(3, 2), n_iters=2)["x_out"].shape
    torch.Size([2, 1])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

#: Parameter names of EfficientVectorRouting with a fixed number of inputs (SPEC §1 table).
EFFICIENT_FIXED_PARAMS = (
    "W_A", "B_A", "W_F1", "W_F2", "B_F2", "W_G1", "W_G2", "B_G2", "W_S", "B_S", "beta_use", "beta_ign",
)
#: Parameter names of EfficientVectorRouting with n_inp == -1 (SPEC §1 table).
EFFICIENT_VARIABLE_PARAMS = (
    "W_A", "B_A", "W_F1", "W_F2", "B_F2", "W_G1", "W_G2", "B_G2", "W_S", "B_S",
    "compute_beta_use.weight", "compute_beta_use.bias", "compute_beta_ign.weight", "compute_beta_ign.bias",
)
#: Parameters indexed by input position i (first dim n1) in EfficientVectorRouting.
EFFICIENT_PER_INPUT = ("W_A", "B_A", "W_S", "B_S", "beta_use", "beta_ign")


def layer_norm_no_affine(x: Tensor, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last dim without affine parameters (biased variance, eps inside the sqrt)."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def _betas(params: Mapping[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """beta_use, beta_ign: the parameters [n_inp, n_out], or the linear layers applied to x [..., n, n_out]."""
    if "compute_beta_use.weight" in params:
        beta_use = x @ params["compute_beta_use.weight"].T + params["compute_beta_use.bias"]
        beta_ign = x @ params["compute_beta_ign.weight"].T + params["compute_beta_ign.bias"]
        return beta_use, beta_ign
    return params["beta_use"], params["beta_ign"]


def _per_input(t: Tensor, n: int) -> Tensor:
    """Broadcast a per-input parameter [n1, ...] over n inputs when n1 == 1."""
    return t.expand(n, *t.shape[1:]) if t.shape[0] == 1 else t


def _masked_activations(a: Tensor, n_out: int, mask: Tensor | None) -> Tensor:
    """f_a = σ(a) as [..., n, 1]; with a mask σ(a set to -inf where masked) as [..., n, n_out]."""
    if mask is None:
        return torch.sigmoid(a).unsqueeze(-1)
    a_full = a.unsqueeze(-1).expand(*a.shape, n_out)
    a_full = a_full.masked_fill(mask.expand(a_full.shape), float("-inf"))
    return torch.sigmoid(a_full)


def _initial_routing(shape: Sequence[int], n_out: int, mask: Tensor | None, like: Tensor) -> Tensor:
    """R at t = 0: 1/n_out everywhere; with a mask softmax_j(log(1/n_out), masked at -inf)."""
    R = torch.full(tuple(shape), 1.0 / n_out, dtype=like.dtype, device=like.device)
    if mask is None:
        return R
    logits = torch.log(R).masked_fill(mask.expand(R.shape), float("-inf"))
    return torch.softmax(logits, dim=-1)


def efficient_reference(
    params: Mapping[str, Tensor],
    x: Tensor,
    n_iters: int,
    normalize: bool = True,
    mask: Tensor | None = None,
) -> dict[str, Tensor | None]:
    """SPEC §1 EfficientVectorRouting, literally. x [..., n, d_inp] → dict (x_out [..., n_out, d_out]).

    ``params`` maps the state_dict names to tensors. ``mask``: bool broadcastable to [..., n, n_out],
    True = input i ignored by output j. V is always materialised here ([..., n, n_out, d_out]).
    """
    n = x.shape[-2]
    n_out, d_out = params["B_F2"].shape
    N = layer_norm_no_affine if d_out > 1 else (lambda t: t)

    beta_use, beta_ign = _betas(params, x)                                   # [..., n, n_out]
    xs = x * n ** -0.5                                                       # [..., n, d_inp]
    W_A, B_A = _per_input(params["W_A"], n), _per_input(params["B_A"], n)
    W_S, B_S = _per_input(params["W_S"], n), _per_input(params["B_S"], n)
    a = torch.einsum("...id,id->...i", xs, W_A) + B_A                       # [..., n]
    if mask is not None:
        mask = mask.expand(*x.shape[:-2], n, n_out)
    f_a = _masked_activations(a, n_out, mask)                                # [..., n, 1 or n_out]
    V = torch.einsum("...id,jd,dh->...ijh", xs, params["W_F1"], params["W_F2"]) + params["B_F2"]

    P = S = None
    x_out = None
    R = D_use = D_ign = phi = None
    for t in range(n_iters):
        if t == 0:
            R = _initial_routing((*x.shape[:-2], n, n_out), n_out, mask, x)
        else:
            P = (
                torch.einsum("...jh,hd,jd->...jd", N(x_out), params["W_G1"], params["W_G2"])
                + params["B_G2"]
            )                                                                # [..., n_out, d_inp]
            S = F.logsigmoid(torch.einsum("...id,...jd->...ij", x, P) * W_S + B_S)  # [..., n, n_out]
            logits = S if mask is None else S.masked_fill(mask, float("-inf"))
            R = torch.softmax(logits, dim=-1)
        D_use = f_a * R
        D_ign = f_a - D_use
        phi = beta_use * D_use - beta_ign * D_ign                            # [..., n, n_out]
        x_out = torch.einsum("...ij,...ijh->...jh", phi, V)                  # [..., n_out, d_out]
    if normalize:
        x_out = N(x_out)
    return {
        "a_inp": a, "V": V, "pred_x_inp": P, "S": S, "R": R, "D_use": D_use, "D_ign": D_ign,
        "phi": phi, "x_out": x_out,
    }


def select_inputs(params: Mapping[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
    """Parameters restricted to the kept input positions (the meaning of removing padded inputs).

    Per-input parameters ([n1, ...] with n1 > 1) are indexed by ``keep`` (a LongTensor of positions);
    everything else (shared or broadcast parameters) is passed through.
    """
    out = dict(params)
    for name in EFFICIENT_PER_INPUT:
        if name in out and out[name].shape[0] > 1:
            out[name] = out[name][keep]
    return out


def definable_reference(
    A: Callable[[Tensor], Tensor],
    F_: Callable[[Tensor], Tensor],
    G: Callable[[Tensor], Tensor],
    S_: Callable[[Tensor, Tensor], Tensor],
    betas: Mapping[str, Tensor],
    x: Tensor,
    n_out: int,
    n_iters: int,
    mask: Tensor | None = None,
) -> dict[str, Tensor | None]:
    """SPEC §2 DefinableVectorRouting: the §1 loop with user modules, no input scaling, no normalisation.

    ``betas`` holds ``beta_use``/``beta_ign`` or the ``compute_beta_*`` linear layers' weights by name.
    """
    n = x.shape[-2]
    beta_use, beta_ign = _betas(betas, x)
    a = A(x)                                                                 # [..., n, 1]
    if mask is not None:
        mask = mask.expand(*x.shape[:-2], n, n_out)
    f_a = _masked_activations(a.squeeze(-1), n_out, mask)
    V = F_(x)                                                                # [..., n, n_out, d_out]
    P = S = x_out = None
    R = D_use = D_ign = phi = None
    for t in range(n_iters):
        if t == 0:
            R = _initial_routing((*x.shape[:-2], n, n_out), n_out, mask, x)
        else:
            P = G(x_out)                                                     # [..., n_out, d_inp]
            S = S_(x, P)                                                     # [..., n, n_out]
            logits = S if mask is None else S.masked_fill(mask, float("-inf"))
            R = torch.softmax(logits, dim=-1)
        D_use = f_a * R
        D_ign = f_a - D_use
        phi = beta_use * D_use - beta_ign * D_ign
        x_out = torch.einsum("...ij,...ijh->...jh", phi, V)
    return {
        "a_inp": a, "V": V, "pred_x_inp": P, "S": S, "R": R, "D_use": D_use, "D_ign": D_ign,
        "phi": phi, "x_out": x_out,
    }


def generative_reference(
    params: Mapping[str, Tensor],
    a_inp: Tensor,
    mu_inp: Tensor,
    n_iters: int,
    p_model: str = "gaussian",
    eps: float = 1e-5,
) -> dict[str, Tensor | None]:
    """SPEC §3 GenerativeMatrixRouting. a_inp [..., n], mu_inp [..., n, d_cov, d_inp] → dict."""
    n = mu_inp.shape[-3]
    W = _per_input(params["W"], n)                                           # [n, n_out, d_inp, d_out]
    B = _per_input(params["B"], n)                                           # [n, n_out, d_cov, d_out]
    beta_use = _per_input(params["beta_use"], n)                             # [n, n_out]
    beta_ign = _per_input(params["beta_ign"], n)
    n_out = W.shape[1]
    V = torch.einsum("...icd,ijdh->...ijch", mu_inp, W) + B                 # [..., n, n_out, d_cov, d_out]
    f_a = torch.sigmoid(a_inp).unsqueeze(-1)                                 # [..., n, 1]
    log_p = a_out = mu_out = sig2_out = None
    R = D_use = D_ign = None
    for t in range(n_iters):
        if t == 0:
            R = torch.full((*a_inp.shape, n_out), 1.0 / n_out, dtype=mu_inp.dtype, device=mu_inp.device)
        else:
            sq = (V - mu_out.unsqueeze(-4)) ** 2                             # [..., n, n_out, d_cov, d_out]
            if p_model == "gaussian":
                log_p = (
                    -(sq / (2 * sig2_out.unsqueeze(-4))).sum(dim=(-2, -1))
                    - torch.log(torch.sqrt(sig2_out)).sum(dim=(-2, -1)).unsqueeze(-2)
                )
            elif p_model == "skm":
                log_p = torch.log_softmax(-sq.sum(dim=(-2, -1)), dim=-1)
            else:
                raise ValueError(p_model)
            R = torch.softmax(F.logsigmoid(a_out).unsqueeze(-2) + log_p, dim=-1)
        D_use = f_a * R                                                      # [..., n, n_out]
        D_ign = f_a - D_use
        a_out = (beta_use * D_use).sum(dim=-2) - (beta_ign * D_ign).sum(dim=-2)  # [..., n_out]
        w = D_use / (D_use.sum(dim=-2, keepdim=True) + eps)
        mu_out = torch.einsum("...ij,...ijch->...jch", w, V)                 # [..., n_out, d_cov, d_out]
        sig2_out = torch.einsum("...ij,...ijch->...jch", w, (V - mu_out.unsqueeze(-4)) ** 2) + eps
    return {
        "V": V, "log_p": log_p, "R": R, "D_use": D_use, "D_ign": D_ign,
        "a_out": a_out, "mu_out": mu_out, "sig2_out": sig2_out,
    }


def end_to_end_credit_reference(phis: Sequence[Tensor], eps: float = 1e-5) -> Tensor:
    """SPEC §4: φ1 @ φ2 @ …, the running product divided by (its std + eps) after each multiplication.

    The std is taken per sample over the last two dims (so a sample's credit never depends on the
    other samples in its batch); torch's default (unbiased) std.
    """
    prod = phis[0]
    for phi in phis[1:]:
        prod = prod @ phi
        prod = prod / (prod.std(dim=(-2, -1), keepdim=True) + eps)
    return prod


def credit_map_reference(credit: Tensor, n_pos: int, depth: int) -> Tensor:
    """[..., n_pos*depth, n_out] → [..., n_pos, depth, n_out] with input index = pos*depth + depth_idx."""
    out = torch.empty(*credit.shape[:-2], n_pos, depth, credit.shape[-1], dtype=credit.dtype)
    for pos in range(n_pos):
        for k in range(depth):
            out[..., pos, k, :] = credit[..., pos * depth + k, :]
    return out


def leaf_params(module: torch.nn.Module) -> dict[str, Tensor]:
    """Detached, grad-requiring copies of every state_dict entry, keyed by state_dict name."""
    return {
        name: t.detach().clone().requires_grad_(t.is_floating_point())
        for name, t in module.state_dict().items()
    }
