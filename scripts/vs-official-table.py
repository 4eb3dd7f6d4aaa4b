"""Markdown table of scripts/vs-official.sh's lines: per mixture and setting, the mean relative
RMS error over the seeds run (and each seed's) here and of the official code, their ratio, the
best hand-made schedule's; then the counts the docs quote.
    scripts/vs-official.sh > runs.txt; python3 scripts/vs-official-table.py runs.txt"""
import collections
import re
import statistics
import sys

SOLVER = {"dpm_solver++": "DPM-Solver++", "ipndm": "iPNDM", "uni_pc": "UniPC"}
HAND_MADE = {"gits-dpm-solver": "GITS", "gits-ipndm": "GITS", "logsnr": "log-SNR", "edm": "Karras"}
LINE = re.compile(r"(\S+)-(dpm_solver\+\+|ipndm|uni_pc)-(\d)-(\d+)-(\d+) ours=(\S+)/\S+ "
                  r"official=(\S+)/\S+ best_hand_made=(\S+)/\S+ (\S+)")

groups = collections.defaultdict(list)
for line in open(sys.argv[1]):
    m = LINE.match(line)
    if not m:
        print(f"not a vs-official.sh line: {line.strip()!r}", file=sys.stderr)
        continue
    mixture, solver, order, nfe, seed = m.group(1, 2, 3, 4, 5)
    groups[(mixture, solver, order, int(nfe))].append(
        (int(seed), float(m.group(6)), float(m.group(7)), float(m.group(8)), m.group(9)))

print("| mixture | setting | seeds | here: RMS (mean; per seed) | official: RMS (mean; per seed) "
      "| here / official | best hand-made |")
print("|---|---|---|---|---|---|---|")
ratios, singles, below = [], [], 0
for (mixture, solver, order, nfe), rs in sorted(groups.items()):
    rs.sort()
    here, official = statistics.mean(r[1] for r in rs), statistics.mean(r[2] for r in rs)
    ratios.append((here / official, mixture, solver, nfe))
    singles += [r[1] / r[2] for r in rs]
    below += sum(r[1] < r[3] for r in rs)
    seeds = f"{rs[0][0]}–{rs[-1][0]}" if len(rs) > 1 else f"{rs[0][0]}"
    each = lambda i: f"; {', '.join(f'{r[i]:.3f}' for r in rs)}" if len(rs) > 1 else ""
    print(f"| {mixture} | {SOLVER[solver]}-{order} @{nfe} | {seeds} | {here:.3f}{each(1)} "
          f"| {official:.3f}{each(2)} | {here / official:.2f} "
          f"| {HAND_MADE.get(rs[0][4], rs[0][4])} {rs[0][3]:.3f} |")
print()
print(f"{len(ratios)} settings: mean here within 1.1x the official mean in "
      f"{sum(r[0] <= 1.1 for r in ratios)} (median ratio {statistics.median(r[0] for r in ratios):.2f}; "
      f"beyond: {[r[1:] for r in ratios if r[0] > 1.1]}); {len(singles)} runs: within 1.1x in "
      f"{sum(x <= 1.1 for x in singles)}, below the best hand-made in {below}")
