"""Markdown table of scripts/gmm-choices.sh's runs: per setting and configuration, the learned
schedule's RMS and median relative error averaged over seeds, the best hand-made schedule's,
and in how many seeds the learned RMS error is below the best hand-made one.
    python3 scripts/gmm-choices-table.py runs.txt"""
import collections
import sys

runs = collections.defaultdict(list)
configs, settings = [], []
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) != 9:
        continue  # a failed run prints fewer fields
    config, mixture, setting, _seed = f[:4]
    rms, med, best_rms, best_med = map(float, f[4:8])
    key = (mixture.split("/")[-1] + ", " + setting.replace("-", " ", 1))
    runs[(config, key)].append((rms, med, best_rms, best_med, f[8]))
    if config not in configs:
        configs.append(config)
    if key not in settings:
        settings.append(key)

def mean(xs):
    return sum(xs) / len(xs)

print("| setting | " + " | ".join(configs) + " | best hand-made |")
print("|---|" + "---|" * (len(configs) + 1))
for key in settings:
    cells, best = [], ""
    for config in configs:
        r = runs.get((config, key))
        if not r:
            cells.append("")
            continue
        wins = sum(x[0] < x[2] for x in r)
        cells.append(f"{mean([x[0] for x in r]):.3f} / {mean([x[1] for x in r]):.3f} ({wins}/{len(r)})")
        best = f"{r[0][4]} {r[0][2]:.3f} / {r[0][3]:.3f}"
    print(f"| {key} | " + " | ".join(cells) + f" | {best} |")
