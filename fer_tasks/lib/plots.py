"""The one plotter of training curves: loss and accuracy on the global epoch axis.

Used by `fer compare` (one validation curve per configuration) and the
real-data bench (train and validation of one run). A dashed line marks each
phase boundary (where more layers were unfrozen), in the run's colour.
"""

from __future__ import annotations

from pathlib import Path

from fer_tasks.lib.io import atomic_path


def plot_curves(
    runs: dict[str, list[dict]], path: Path, title: str, with_train: bool = False
) -> None:
    """`runs`: label -> history rows ({"epoch", "phase", "loss", "val_loss", "accuracy",
    "val_accuracy"}); one panel for loss, one for accuracy; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, hist) in enumerate(runs.items()):
        color = colors[i % len(colors)]
        for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
            for k, style, name in (
                (f"val_{key}", "-", f"{label} val" if with_train else label),
                *([(key, ":", f"{label} train")] if with_train else []),
            ):
                pts = [(r["epoch"], r[k]) for r in hist if r.get(k) is not None]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    marker = "." if len(xs) < 40 else None
                    ax.plot(xs, ys, style, marker=marker, color=color, label=name)
            for a, b in zip(hist, hist[1:], strict=False):
                if a.get("phase") != b.get("phase"):
                    ax.axvline(a["epoch"] + 0.5, color=color, ls="--", lw=0.9, alpha=0.6)
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set_title(key)
        ax.set_xlabel("epoch (global, across phases)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(f"{title} (dashed: phase boundaries, where more layers were unfrozen)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
