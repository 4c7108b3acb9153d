"""The project's charts, each written atomically as a PNG.

`plot_curves`, the one plotter of training curves (loss and accuracy on the
global epoch axis), is used by `fer compare` (one validation curve per
configuration) and the real-data bench (train and validation of one run); a
dashed line marks each phase boundary (where more layers were unfrozen), in
the run's colour. `evaluate` draws the reliability diagrams before and after
calibration (`plot_reliability`), precision and recall per class
(`plot_per_class`) and the gallery of its most confident mistakes (`plot_gallery`).
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


def _figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_reliability(panels: dict[str, dict], path: Path, title: str) -> None:
    """Reliability diagrams side by side, one per entry of `panels` (e.g. before / after).

    Each entry is `lib.calibration.reliability`'s output plus ``ece``: per bin, the
    accuracy as a bar, the gap to the bin's mean confidence hatched (as in Guo et
    al., 2017), the diagonal of perfect calibration, and the faces per bin as a
    grey bar along the bottom (scaled to 0.1 for the fullest bin).
    """
    import numpy as np

    fig = _figure(5 * len(panels), 5)
    for i, (label, r) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        edges, count = r["edges"], r["count"]
        width = np.diff(edges)
        acc = np.nan_to_num(r["accuracy"])
        ax.bar(
            edges[:-1],
            acc,
            width,
            align="edge",
            color="tab:blue",
            edgecolor="white",
            label="accuracy in bin",
        )
        conf = np.where(count > 0, r["confidence"], acc)
        ax.bar(
            edges[:-1],
            np.abs(conf - acc),
            width,
            bottom=np.minimum(acc, conf),
            align="edge",
            fill=False,
            hatch="//",
            edgecolor="tab:red",
            label="gap to mean confidence",
        )
        ax.bar(
            edges[:-1],
            0.1 * count / max(count.max(), 1),
            width,
            align="edge",
            color="grey",
            alpha=0.6,
            label="faces in bin (scaled)",
        )
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="confidence (top probability)",
            ylabel="accuracy",
            title=f"{label}: ECE {r['ece']:.3f}",
        )
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_per_class(per_class: dict[str, dict], path: Path, title: str) -> None:
    """Precision and recall of every class as paired bars (metrics' ``per_class``)."""
    import numpy as np

    names = list(per_class)
    x = np.arange(len(names))
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    for k, (key, color) in enumerate((("precision", "tab:blue"), ("recall", "tab:orange"))):
        values = [per_class[n][key] for n in names]
        bars = ax.bar(x + (k - 0.5) * 0.4, values, 0.4, label=key, color=color)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, [f"{n}\n(n={per_class[n]['support']})" for n in names])
    ax.set(ylim=(0, 1.1), ylabel="share", title=title)
    ax.legend(loc="upper left", ncols=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_gallery(rows: dict[str, list[tuple]], path: Path, title: str, columns: int) -> None:
    """One row per class: its faces, each ``(image uint8 (H, W), caption)``, left to right."""
    fig = _figure(1.6 * columns + 1.2, 1.9 * len(rows) + 0.6)
    for r, (label, items) in enumerate(rows.items()):
        for c in range(columns):
            ax = fig.add_subplot(len(rows), columns, r * columns + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=10)
                if not items:
                    ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
            if c < len(items):
                image, caption = items[c]
                ax.imshow(image, cmap="gray", vmin=0, vmax=255)
                ax.set_title(caption, fontsize=7)
            else:
                for side in ax.spines.values():
                    side.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
