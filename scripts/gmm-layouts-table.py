"""Markdown table of scripts/gmm-layouts.sh's runs: for each combination of starts (U = uniform θ,
H = the best hand-made schedule; in the λ or t layout) the start with the lower loss on the
teacher pairs is kept, as `ld3 train --init both` keeps one; per setting, the kept runs' RMS error
averaged over seeds, then the mean ratio to the best hand-made schedule and how many runs beat it.
    python3 scripts/gmm-layouts-table.py layouts.txt"""
import collections
import sys

COMBOS = {
    "λ (default)": [("UNIFORM", "lambda"), ("HAND_MADE", "lambda")],
    "t (official)": [("UNIFORM", "time"), ("HAND_MADE", "time")],
    "U in λ + H in t": [("UNIFORM", "lambda"), ("HAND_MADE", "time")],
    "U, H in λ + H in t": [("UNIFORM", "lambda"), ("HAND_MADE", "lambda"), ("HAND_MADE", "time")],
    "all four": [("UNIFORM", "lambda"), ("HAND_MADE", "lambda"), ("UNIFORM", "time"), ("HAND_MADE", "time")],
}

runs, best = collections.defaultdict(dict), {}
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) != 8:
        continue  # a failed run prints fewer fields
    key = (f[0], int(f[1]))
    runs[key][(f[2], f[3])] = (float(f[4]), float(f[5]))
    best[key] = float(f[7])
complete = [k for k in runs if len(runs[k]) == 4]
settings = sorted({k[0] for k in complete})
print("| setting | " + " | ".join(COMBOS) + " | best hand-made |")
print("|---" * (len(COMBOS) + 2) + "|")
ratios, below = collections.defaultdict(list), collections.Counter()
for s in settings:
    keys = [k for k in complete if k[0] == s]
    cells = []
    for name, starts in COMBOS.items():
        kept = [runs[k][min(starts, key=lambda st: runs[k][st][0])][1] for k in keys]
        cells.append(f"{sum(kept) / len(kept):.3f}")
        ratios[name] += [v / best[k] for v, k in zip(kept, keys)]
        below[name] += sum(v < best[k] for v, k in zip(kept, keys))
    hm = sum(best[k] for k in keys) / len(keys)
    print(f"| {s} ({len(keys)} seeds) | " + " | ".join(cells) + f" | {hm:.3f} |")
print("| mean ratio to the best hand-made | "
      + " | ".join(f"{sum(r) / len(r):.3f}" for r in ratios.values()) + " | 1 |")
print("| runs below the best hand-made | "
      + " | ".join(f"{below[c]}/{len(complete)}" for c in COMBOS) + " | |")
