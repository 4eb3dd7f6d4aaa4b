"""Markdown table of scripts/gmm-choices.sh's runs: per setting and configuration, the learned
schedule's RMS and median relative error averaged over seeds (in brackets: in how many seeds
the learned RMS error is below the best hand-made one's), and the best hand-made schedule's.
    python3 scripts/gmm-choices-table.py runs.txt"""
import collections
import sys

SOLVER = {"dpm-solver++": "DPM-Solver++", "ipndm": "iPNDM", "unipc": "UniPC"}
HAND_MADE = {"gits-dpm-solver": "GITS", "gits-ipndm": "GITS", "logsnr": "log-SNR", "edm": "Karras"}


def setting_name(mixture, setting):
    """`gmm-other/vp-a`, `dpm-solver++-3@6` -> `vp-a, DPM-Solver++-3 @6`."""
    solver_order, nfe = setting.split("@")
    solver, order = solver_order.rsplit("-", 1)
    return f"{mixture.split('/')[-1]}, {SOLVER.get(solver, solver)}-{order} @{nfe}"


runs = collections.defaultdict(list)
configs, settings, skipped = [], [], 0
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) != 9:
        skipped += 1  # a failed run prints fewer fields
        continue
    config, key = f[0], setting_name(f[1], f[2])
    runs[(config, key)].append([float(x) for x in f[4:8]] + [HAND_MADE.get(f[8], f[8])])
    if config not in configs:
        configs.append(config)
    if key not in settings:
        settings.append(key)
if skipped:
    print(f"{skipped} runs without scores (failed) left out", file=sys.stderr)


def mean(xs):
    return sum(xs) / len(xs)


print("| setting | " + " | ".join(configs) + " | best hand-made |")
print("|---|" + "---|" * (len(configs) + 1))
for key in settings:
    cells, best = [], ""
    for config in configs:
        r = runs.get((config, key), [])
        if not r:
            cells.append("")
            continue
        wins = sum(x[0] < x[2] for x in r)
        cells.append(f"{mean([x[0] for x in r]):.3f} / {mean([x[1] for x in r]):.3f} ({wins}/{len(r)})")
        best = f"{r[0][4]} {r[0][2]:.3f} / {r[0][3]:.3f}"
    print(f"| {key} | " + " | ".join(cells) + f" | {best} |")
