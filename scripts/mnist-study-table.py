"""The docs table of scripts/mnist-study.sh's evaluations kept in OUT: per setting, the learned
schedules' RMS distance to the reference (mean / median per sample) averaged over the seeds found,
with each seed's mean in brackets, and every hand-made schedule's; the lowest mean in bold.
    python3 scripts/mnist-study-table.py OUT [LOSS]
LOSS (default l2) picks the learned schedules and evaluations of that training loss
(scripts/mnist-study.sh's LOSS: `...-seed0-rms.json`, `...-eval-rms.json`)."""
import glob
import json
import os
import sys

HAND_MADE = ["time-uniform", "time-quadratic", "logsnr", "edm", "time-edm", "gits"]
HEADER = {"logsnr": "log-SNR", "gits": "GITS"}
LABEL = {"ipndm": "iPNDM", "dpm-solver++": "DPM-Solver++", "unipc": "UniPC"}


def setting_key(tag):
    """Rows by NFE, then iPNDM, DPM-Solver++, UniPC."""
    solver = next((i for i, name in enumerate(LABEL) if tag.startswith(name)), len(LABEL))
    return int(tag.rsplit("-", 1)[-1]), solver


def setting_label(tag):
    """`dpm-solver++-3-reference-6` -> `DPM-Solver++-3 @6` (UniPC keeps its variant)."""
    parts = tag.split("-")
    nfe, rest = parts[-1], parts[:-1]
    for name, label in LABEL.items():
        if "-".join(rest).startswith(name):
            extra = "-".join(rest)[len(name) + 1:].split("-")
            order, variant = extra[0], extra[1:] if len(extra) > 1 else []
            shown = " " + variant[0] if variant and variant[0] != "reference" else ""
            return f"{label}-{order}{shown} @{nfe}"
    return tag


out = sys.argv[1]
loss = sys.argv[2] if len(sys.argv) > 2 else "l2"
sfx = "" if loss == "l2" else "-" + loss
print("| setting | LD3 (seeds) | " + " | ".join(HEADER.get(h, h) for h in HAND_MADE) + " |")
print("|---" * (len(HAND_MADE) + 2) + "|")
ending = f"-eval{sfx}.json"
tags = [os.path.basename(p)[: -len(ending)] for p in glob.glob(os.path.join(out, "*" + ending))]
for tag in sorted(tags, key=setting_key):
    path = os.path.join(out, tag + ending)
    rows = {}
    for r in json.load(open(path))["rows"]:
        name = os.path.basename(r["schedule"])[:-5].replace(tag + "-", "")
        if name.startswith("seed"):
            if not name.endswith(sfx) or (not sfx and not name[4:].isdigit()):
                continue
            name = name[: len(name) - len(sfx)]
        rows[name] = (r["l2_rms_mean"], r["l2_rms_median"])
    seeds = sorted((k for k in rows if k.startswith("seed")), key=lambda k: int(k[4:]))
    if not seeds:
        continue
    mean = sum(rows[s][0] for s in seeds) / len(seeds)
    median = sum(rows[s][1] for s in seeds) / len(seeds)
    cells = {"ld3": (mean, median), **{h: rows[h] for h in HAND_MADE if h in rows}}
    best = min(v[0] for v in cells.values())

    def cell(v):
        text = f"{v[0]:.3f} / {v[1]:.3f}"
        return f"**{text}**" if v[0] == best else text

    per_seed = ", ".join(f"{rows[s][0]:.3f}" for s in seeds)
    numbers = ", ".join(s[len("seed"):] for s in seeds)
    label = f"{cell(cells['ld3'])} (seed{'s' if len(seeds) > 1 else ''} {numbers}: {per_seed})"
    print(f"| {setting_label(tag)} | {label} | "
          + " | ".join(cell(rows[h]) if h in rows else "—" for h in HAND_MADE) + " |")
