"""Plots p95 latency against concurrent streams per model from bench/asr_streams.sh's CSV.

    .venv/bin/python bench/asr_plot.py target/asr_streams.csv docs/img/asr_streams.png
"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "shared": "shared model, batched",
    "unbatched": "shared model, one utterance at a time",
    "per_session": "a model per session",
}


def main(source: str, target: str) -> None:
    rows = list(csv.DictReader(open(source)))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for model in dict.fromkeys(r["model"] for r in rows):
        runs = sorted((int(r["streams"]), r) for r in rows if r["model"] == model)
        xs = [n for n, _ in runs]
        ys = [float(r["p95_ms"]) / 1000 for _, r in runs]
        (line,) = ax.plot(xs, ys, marker="o", label=LABELS.get(model, model))
        for x, y, (_, r) in zip(xs, ys, runs):
            if int(r["refused"]):  # the server was full: say how many got in
                ax.annotate(f"{r['admitted']} admitted", (x, y), textcoords="offset points",
                            xytext=(-8, 6), ha="right", fontsize=7, color=line.get_color())
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.text(ax.get_xlim()[0], 1.02, " target p95 1.0 s", color="grey", fontsize=8)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("concurrent real-time streams")
    ax.set_ylabel("p95 end of utterance → final text (s)")
    ax.set_title("Live captioning on 2 vCPUs (bench/asr_streams.sh)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(target)
    print(f"plot: {target}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
