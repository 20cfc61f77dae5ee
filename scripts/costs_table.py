"""Print a run's stage_costs.csv as the markdown table the docs show (they come from a run's CSV, not
retyped; tests/test_docs.py renders docs/deit_b.md's again and compares).

    python scripts/costs_table.py docs/data/2026-12-04-deit_b/stage_costs.csv
"""

import sys

import pandas as pd


def table(path: str) -> str:
    return pd.read_csv(path).to_markdown(index=False, floatfmt=".2f")


if __name__ == "__main__":
    print(table(sys.argv[1]))
