"""The demo's budget study: train routing heads on the demo's cached BBC News hidden states, score validation only.

How the recipe of ``configs/experiments/bbc_minilm_demo.yaml`` (epochs, batch, positions per training step) was
chosen (every run and its rule: README.md beside this script). A plain PyTorch loop over the demo's hidden-state cache, with the demo's head
(RoutingHead over all 7 hidden states) and optimizer (RAdam, one-cycle, pct_start 0.3), and its own copies of
hidden-state mixup (Beta(0.65, 0.65) per example, partner i + 1) and of the random position subsets per training
step. Positions are drawn either as the task draws them (``--draw unpadded``:
``heinsen_zoo.tasks.positions.sample_positions``, unpadded positions first) or as they were drawn when the
256-token rows of README.md were measured (``--draw all``, the default, so that those rows reproduce: among all
positions, padded ones included). It reads the **train and validation splits only**: the test split is never
loaded. Its random streams differ from the Lightning run's (``make demo``), so the same recipe lands on a
different head; the study compares recipes. The splits are held densely padded in memory: 2 chunks of 512
tokens take ~10 GB, so run those one at a time on a 24 GB machine.

Usage (the cache is computed under ``--out`` on first use; ~7-9 min per run on 1 core)::

    .venv/bin/python reproduce/demo/budget_study.py --max-length 512 --epochs 10 --batch-size 16 \
        --train-positions 128 --draw unpadded --threads 1 --seed 0       # the demo's recipe
    .venv/bin/python reproduce/demo/budget_study.py --batch-size 16 --train-positions 128 --threads 1  # 256 tokens

Before training it fits the demo's two baselines on the same split (logistic regression on mean-pooled
hidden states, C chosen on validation: ``heinsen_zoo.demo.baselines.fit_baselines(score_test=False)``) and
prints their validation accuracy, so every study compares the head with what a user would pick instead, in the
same run (``--no-probes`` skips them; ~15 s). Prints the validation accuracy after every epoch (every N-th
and the last with ``--val-every N``) and a final ``RESULT {json}`` line (the probes' under ``probes``). With ``--ema``,
``--swa-from`` or ``--tta-repeats`` the same trained head is also scored as an EMA of its weights, as the
average of its epoch-end weights, or routing each article in random subsets of positions (RESULT's
``variants``: accuracy, errors and loss of each, a paired comparison); ``--save`` writes every variant's
validation log-probabilities and the final head's after each epoch (``torch.load``-able)::

    .venv/bin/python reproduce/demo/budget_study.py --max-length 512 --batch-size 16 --train-positions 128 \
        --draw unpadded --threads 1 --ema 0.995 --swa-from 6 --tta-repeats 4 --seed 0 --save runs/s0.pt
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F


def load_split(dataset, n_pos: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A cached split as (hidden fp16 [n, n_pos, 7, 384], padding_mask [n, n_pos], labels [n]), padded to n_pos."""
    first = dataset[0]["hidden"]
    hidden = torch.zeros(len(dataset), n_pos, *first.shape[1:], dtype=first.dtype)
    mask = torch.ones(len(dataset), n_pos, dtype=torch.bool)
    labels = torch.empty(len(dataset), dtype=torch.long)
    for i in range(len(dataset)):
        item = dataset[i]
        n = item["hidden"].shape[0]
        hidden[i, :n], mask[i, :n], labels[i] = item["hidden"], item["padding_mask"], int(item["label"])
    return hidden, mask, labels


SUBSET_SEED = 0  # the draw of --train-fraction's part of the training split (the same for every head seed)


def stratified_rows(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted rows of a stratified random ``fraction`` of a split: ``round(fraction · n)`` of each label's n rows
    (at least one). ``heinsen_zoo.data.stratified_split`` is the project's stratified draw (by key strings); this
    torch-seeded one drew the fewer-labels rows of README.md, and stays so that they reproduce.

    Example:
        >>> rows = stratified_rows(torch.tensor([0, 0, 0, 0, 1, 1]), 0.5, seed=0)
        >>> len(rows), torch.tensor([0, 0, 0, 0, 1, 1])[rows].bincount().tolist()
        (3, [2, 1])
    """
    g = torch.Generator().manual_seed(seed)
    picked = []
    for label in labels.unique():
        rows = (labels == label).nonzero().squeeze(-1)
        picked.append(rows[torch.randperm(len(rows), generator=g)[: max(1, round(fraction * len(rows)))]])
    return torch.cat(picked).sort().values


def load_train_val(
    out: Path,
    max_length: int,
    max_chunks: int,
    split_seed: int = 0,
    probes: bool = True,
    train_fraction: float = 1.0,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], dict[str, dict[str, float]]]:
    """The demo's train and validation splits (of split seed ``split_seed``) at ``max_chunks`` chunks of
    ``max_length`` tokens from its cache under ``out`` (computed there if missing; one cache serves every seed),
    and, with ``probes``, the demo's baselines on them: ``{name: {"val_acc": %, "errors": n, "C": C}}``. With
    ``train_fraction`` < 1 the head and the probes both get the same stratified random part of the training
    split (``stratified_rows``, seeded by ``SUBSET_SEED``); validation is always whole."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
    from heinsen_zoo.cli import build_experiment
    from heinsen_zoo.demo.run import _overrides, _parse

    argv = ["--out", str(out), "--max-length", str(max_length), "--max-chunks", str(max_chunks), "--no-progress",
            "--split-seed", str(split_seed)]  # fmt: skip
    # only train and validation are served (the cache holds the corpus's hidden states; the test split's
    # articles and labels are never loaded from it)
    only_train_val = ["--data.init_args.splits", '["train", "val"]']
    cli = build_experiment("bbc_minilm_demo", _overrides(_parse(argv)) + only_train_val, logger="csv")
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("fit")  # train + validation only
    cached = {split: dm.cached[split] for split in ("train", "val")}
    if train_fraction < 1:
        cached["train"] = cached["train"].view(
            stratified_rows(cached["train"].labels, train_fraction, SUBSET_SEED)
        )
    scores = {}
    if probes:
        from heinsen_zoo.demo.baselines import fit_baselines

        n_val = len(cached["val"])
        for row in fit_baselines(cached, score_test=False):
            scores[row.name] = {"val_acc": round(100 * row.val_acc, 2), "errors": round(n_val * (1 - row.val_acc)), "C": row.c}  # fmt: skip
    return {split: load_split(data, max_length * max_chunks) for split, data in cached.items()}, scores


def validated_epochs(epochs: int, every: int) -> list[int]:
    """The epochs (1-based) after which the head is validated: every ``every``-th and always the last.

    >>> validated_epochs(10, 1) == list(range(1, 11)), validated_epochs(97, 10)[-3:], validated_epochs(5, 10)
    (True, [80, 90, 97], [5])
    """
    return [e for e in range(1, epochs + 1) if e % every == 0 or e == epochs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="the demo's run folder (its cache)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--max-length", type=int, default=256, help="tokens per article (the demo's cache at that length)"
    )
    p.add_argument("--max-chunks", type=int, default=1, help="chunks of max-length tokens per article")
    p.add_argument("--train-positions", type=int, default=0, help="positions per article per step (0 = all)")
    p.add_argument(
        "--draw",
        choices=["all", "unpadded"],
        default="all",
        help="positions drawn among all (padding included, as measured for the 256-token study) or among "
        "unpadded ones first (the task's heinsen_zoo.tasks.positions.sample_positions)",
    )
    p.add_argument(
        "--n-hid", type=int, default=64, help="vectors of the head's hidden routings (the paper: 64)"
    )
    p.add_argument(
        "--weight-decay", type=float, default=0.0, help="decoupled weight decay of RAdam (the paper: 0)"
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--pct-start", type=float, default=0.3)
    p.add_argument("--mixup-alpha", type=float, default=0.65)
    p.add_argument(
        "--ema", type=float, default=0.0, help="score an EMA of the weights with this decay (0 = off)"
    )
    p.add_argument(
        "--swa-from",
        type=int,
        default=0,
        help="also score the uniform average of the weights at the end of epochs N..last (0 = off)",
    )
    p.add_argument(
        "--tta-repeats",
        type=int,
        default=0,
        help="also score the final head routing each validation article in random disjoint subsets of "
        "train-positions positions (the training steps' size), log-probabilities averaged over the subsets "
        "and over this many random partitions (0 = off)",
    )
    p.add_argument("--save", type=Path, default=None, help="write every variant's validation log-probs here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="the demo's train / validation split of this seed (0 = the demo's); validation of several splits "
        "can choose a recipe that does not hang on one",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument(
        "--train-fraction",
        type=float,
        default=1.0,
        help="train the head and the probes on this stratified random fraction of the training split (in (0, 1]; "
        "SUBSET_SEED): how each fares with fewer labelled articles",
    )
    p.add_argument(
        "--no-probes", dest="probes", action="store_false", help="skip the baselines' validation scores"
    )
    p.add_argument(
        "--val-every",
        type=int,
        default=1,
        help="validate after every N-th epoch and after the last (long runs of few articles: validation "
        "would cost more than training)",
    )
    a = p.parse_args()
    if not 0 < a.train_fraction <= 1:
        p.error(f"--train-fraction: expected a number in (0, 1], got {a.train_fraction}")
    if a.val_every < 1:
        p.error(f"--val-every: expected a whole number >= 1, got {a.val_every}")
    val_epochs = validated_epochs(a.epochs, a.val_every)

    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from heinsen_zoo.heads import RoutingHead
    from heinsen_zoo.tasks.positions import sample_positions

    splits, probes = load_train_val(
        a.out, a.max_length, a.max_chunks, a.split_seed, a.probes, a.train_fraction
    )
    for name, score_ in probes.items():
        print(
            f"probe {name} (C={score_['C']:g}) val_acc {score_['val_acc']:.2f} errors {score_['errors']}",
            flush=True,
        )
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    (htr, mtr, ytr), (hva, mva, yva) = splits["train"], splits["val"]
    head = RoutingHead(7, 384, 5, n_hid=a.n_hid)
    opt = torch.optim.RAdam(
        head.parameters(), lr=a.lr, weight_decay=a.weight_decay, decoupled_weight_decay=a.weight_decay > 0
    )
    n = len(ytr)
    steps_per_epoch = math.ceil(n / a.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=a.lr, total_steps=steps_per_epoch * a.epochs, pct_start=a.pct_start
    )
    g = torch.Generator().manual_seed(a.seed)
    alpha = torch.tensor(a.mixup_alpha)
    beta = torch.distributions.Beta(alpha, alpha) if a.mixup_alpha > 0 else None
    ema = AveragedModel(head, multi_avg_fn=get_ema_multi_avg_fn(a.ema)) if a.ema else None

    @torch.no_grad()
    def log_probs(model: torch.nn.Module) -> torch.Tensor:
        """Validation log-probabilities [n_val, 5], every position routed."""
        model.eval()
        out = torch.cat([model(hva[i : i + 64], mva[i : i + 64]).float() for i in range(0, len(yva), 64)])
        model.train()
        return out.log_softmax(-1)

    @torch.no_grad()
    def subset_log_probs(model: torch.nn.Module, repeats: int, size: int) -> torch.Tensor:
        """Validation log-probabilities [n_val, 5], each article routed in random disjoint subsets of at most
        ``size`` of its unpadded positions; the subsets' log-probabilities averaged (over ``repeats`` random
        partitions too), then renormalized."""
        gen = torch.Generator().manual_seed(a.seed + 1000)
        parts = []  # (article, positions)
        for _ in range(repeats):
            for i in range(len(yva)):
                real = (~mva[i]).nonzero().squeeze(-1)
                shuffled = real[torch.randperm(len(real), generator=gen)]
                chunks = shuffled.tensor_split(math.ceil(len(real) / size))
                parts += [(i, c.sort().values) for c in chunks]
        total = torch.zeros(len(yva), 5)
        count = torch.zeros(len(yva), 1)
        model.eval()
        for j in range(0, len(parts), 64):
            group = parts[j : j + 64]
            h = torch.zeros(len(group), size, *hva.shape[2:], dtype=hva.dtype)
            m = torch.ones(len(group), size, dtype=torch.bool)
            for row, (i, pos) in enumerate(group):
                h[row, : len(pos)], m[row, : len(pos)] = hva[i, pos], False
            lp = model(h, m).float().log_softmax(-1)
            articles = torch.tensor([i for i, _ in group])
            total.index_add_(0, articles, lp)
            count.index_add_(0, articles, torch.ones(len(group), 1))
        model.train()
        return (total / count).log_softmax(-1)

    def score(lp: torch.Tensor) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) of validation log-probabilities."""
        return (lp.argmax(-1) == yva).float().mean().item(), F.nll_loss(lp, yva).item()

    t0, history, per_epoch = time.perf_counter(), [], []
    swa_sum, swa_n = None, 0
    for epoch in range(a.epochs):
        perm, total_loss, t_epoch = torch.randperm(n, generator=g), 0.0, time.perf_counter()
        for s in range(steps_per_epoch):
            idx = perm[s * a.batch_size : (s + 1) * a.batch_size]
            h, m, y = htr[idx], mtr[idx], ytr[idx]
            if a.train_positions and a.draw == "unpadded":
                h, m = sample_positions(h, m, a.train_positions, g)
            elif a.train_positions:  # a random subset of positions per article, in order
                pos = (
                    torch.rand(len(idx), h.shape[1], generator=g)
                    .argsort(-1)[:, : a.train_positions]
                    .sort(-1)
                    .values
                )
                rows = torch.arange(len(idx))[:, None]
                h, m = h[rows, pos], m[rows, pos]
            targets = F.one_hot(y, 5).float()
            h = h.float().masked_fill_(m[..., None, None], 0.0)
            if beta is not None:  # mixup, partner i + 1
                r = beta.sample((len(idx),))
                h = torch.lerp(h.roll(-1, 0), h, r[:, None, None, None])
                targets = r[:, None] * targets + (1 - r[:, None]) * targets.roll(-1, 0)
                m = (m & (r[:, None] > 0)) | (m.roll(-1, 0) & (r[:, None] < 1))
            loss = -(targets * head(h, m).float().log_softmax(-1)).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item()
            if ema is not None:
                ema.update_parameters(head)
        if a.swa_from and epoch + 1 >= a.swa_from:  # running sum of the epoch-end weights
            state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            swa_sum = state if swa_sum is None else {k: swa_sum[k] + state[k] for k in state}
            swa_n += 1
        line = f"epoch {epoch + 1} train_loss {total_loss / steps_per_epoch:.4f}"
        if epoch + 1 in val_epochs:
            per_epoch.append(log_probs(head))
            acc, val_loss = score(log_probs(ema.module) if ema is not None else per_epoch[-1])
            history.append(round(100 * acc, 2))
            line += f" val_loss {val_loss:.4f} val_acc {100 * acc:.2f}"
        print(f"{line} epoch_s {time.perf_counter() - t_epoch:.1f}", flush=True)
    variants = {"final": per_epoch[-1]}
    if ema is not None:
        variants["ema"] = log_probs(ema.module)
    if swa_n:
        swa = RoutingHead(7, 384, 5, n_hid=a.n_hid)
        swa.load_state_dict({k: v / swa_n for k, v in swa_sum.items()})
        variants[f"swa_from_{a.swa_from}"] = log_probs(swa)
    if a.tta_repeats:
        t_tta = time.perf_counter()
        variants[f"subsets_x{a.tta_repeats}"] = subset_log_probs(head, a.tta_repeats, a.train_positions)
        print(f"subset scoring {time.perf_counter() - t_tta:.1f} s", flush=True)
    scores = {}
    for name, lp in variants.items():
        acc, loss = score(lp)
        scores[name] = {"val_acc": round(100 * acc, 2), "errors": int((lp.argmax(-1) != yva).sum()), "val_loss": round(loss, 4)}  # fmt: skip
    if a.save is not None:
        torch.save({"labels": yva, "variants": variants, "per_epoch": torch.stack(per_epoch), "val_epochs": val_epochs}, a.save)  # fmt: skip
    recipe = {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items() if k not in ("out", "probes")
    }
    print("RESULT", json.dumps({**recipe, "val_epochs": val_epochs, "val_acc": history, "variants": scores, "probes": probes, "wall_s": round(time.perf_counter() - t0)}))  # fmt: skip


if __name__ == "__main__":
    main()
