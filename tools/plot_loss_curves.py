#!/usr/bin/env python3
"""Validation Dice curves of iris-train runs, one line per run, as a PNG.

Usage:
  python3 tools/plot_loss_curves.py --out docs/img/loss_curves.png \
      soft_dice=build/curves/soft_dice adaptive_tversky=build/curves/adaptive_tversky

Reads OUTPUT_DIR/metrics.jsonl of each run (the lines with val_dice; per
dataset from val_dice_by_dataset) and draws one panel per validation dataset
plus the mean. Needs matplotlib (not installed by scripts/setup.sh:
.venv/bin/pip install matplotlib). Also prints the curves as a Markdown table.
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_run(folder):
    curve = []
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if record.get("val_dice") is None:
                continue
            by = record.get("val_dice_by_dataset") or {}
            curve.append((record["iteration"] + 1, record["val_dice"], by))
    if not curve:
        raise SystemExit(f"{folder}/metrics.jsonl has no validation lines (train.validate_every?)")
    return curve


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("runs", nargs="+", help="NAME=OUTPUT_DIR")
    args = parser.parse_args()
    runs = {}
    for item in args.runs:
        name, _, folder = item.partition("=")
        runs[name] = read_run(folder)
    datasets = sorted({d for curve in runs.values() for _, _, by in curve for d in by})
    panels = ["mean"] + datasets
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for name, curve in runs.items():
            xs = [it for it, _, _ in curve]
            ys = [mean if panel == "mean" else by.get(panel) for _, mean, by in curve]
            ax.plot(xs, ys, marker="o", markersize=3, label=name)
        ax.set_title(f"validation Dice: {panel}")
        ax.set_xlabel("iteration")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")
    header = "| iteration | " + " | ".join(f"{n} ({p})" for p in panels for n in runs) + " |"
    print(header)
    print("|" + " --- |" * (1 + len(panels) * len(runs)))
    iterations = sorted({it for curve in runs.values() for it, _, _ in curve})
    for it in iterations:
        cells = []
        for p in panels:
            for n, curve in runs.items():
                row = [(mean, by) for i, mean, by in curve if i == it]
                v = None if not row else (row[0][0] if p == "mean" else row[0][1].get(p))
                cells.append("" if v is None else f"{v:.3f}")
        print(f"| {it} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
