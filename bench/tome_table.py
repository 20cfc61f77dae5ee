"""docs/merging.md's accuracy tables, rendered from the CSV bench/tome_accuracy.py wrote (issue 42).

    python bench/tome_table.py docs/data/tome_accuracy-2026-12-07.csv

One table per run (the CSV's `command`): a line on the model and the data, then one row per r with
the tokens entering each block, the token fraction, top-1 off the shelf and after the merged
finetune, each with its standard error and its difference from the off-the-shelf r = 0 row.
"""

from __future__ import annotations

import sys

import pandas as pd


def tables(csv: str) -> list[list[str]]:
    runs = pd.read_csv(csv, keep_default_na=False)
    return [_table(run) for _, run in runs.groupby("command", sort=False)]


def _table(run: pd.DataFrame) -> list[str]:
    head = run.iloc[0]
    off = run[run["mode"] == "off_the_shelf"].set_index("r")
    tuned = run[run["mode"] == "finetuned_merged"].set_index("r")
    epochs = f" ({int(tuned['finetune_epochs'].iloc[0])} epoch{'s' if tuned['finetune_epochs'].iloc[0] != 1 else ''})"
    lines = [
        f"`{head['model']}`: img {head['img_size']}, patch {head['patch_size']}, depth {head['depth']}, {head['tokens']} tokens; "
        f"base trained {head['train_epochs']} epochs on {head['train_images']:,} training images; scored on "
        f"{head['eval_images']:,} evaluation images ({head['date']}, {head['cpu']}, {head['threads']} torch "
        f"thread{'s' if head['threads'] != 1 else ''}).",
        "",
        "| r | tokens per block | token fraction | off the shelf top-1 | Δ |"
        + (f" finetuned merged top-1{epochs} | Δ |" if len(tuned) else ""),
        "|--:|:--|--:|--:|--:|" + ("--:|--:|" if len(tuned) else ""),
    ]
    for r, row in off.iterrows():
        line = f"| {r} | {row['tokens_per_block']} | {row['token_fraction']:.3f} | {_top1(row)} |"
        if r in tuned.index:
            line += f" {_top1(tuned.loc[r])} |"
        lines.append(line)
    return [*lines, "", f"Command: `{head['command']}`"]


def _top1(row) -> str:
    return f"{row['top1']:.2f} ± {row['top1_se']:.2f} | {float(row['delta_vs_r0_off_the_shelf']):+.2f}"


if __name__ == "__main__":
    for path in sys.argv[1:]:
        for table in tables(path):
            print("\n".join(table), end="\n\n")
