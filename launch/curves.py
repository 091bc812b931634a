"""Training curves as a PNG, read back from the run's own TensorBoard event files (the one record of them).

One panel per scalar family worth reading at a glance: each phase's loss (`rec/loss`, `id/loss`, ...) and
every validation metric (`valid/*`); throughput and learning-rate tags stay in TensorBoard.
"""

from __future__ import annotations

from pathlib import Path

from fusionrec.cluster.results import save_figure


def read_scalars(tb_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of every event file under `tb_dir`: tag -> [(step, value)] sorted by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(tb_dir).glob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"{tb_dir}: no TensorBoard event files")
    out: dict[str, list[tuple[int, float]]] = {}
    for path in files:
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0 = keep every point
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(points) for tag, points in out.items()}


def curve_tags(tags: list[str]) -> list[str]:
    return sorted(t for t in tags if t.endswith("/loss") or t.startswith("valid/"))


def plot_training_curves(tb_dir: str | Path, path: str | Path, title: str = "") -> Path:
    """PNG of the loss and validation curves of a run (matplotlib, Agg); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalars = read_scalars(tb_dir)
    tags = curve_tags(list(scalars))
    if not tags:
        raise ValueError(f"{tb_dir}: no loss or validation scalars to plot (tags: {sorted(scalars)})")
    fig, axes = plt.subplots(1, len(tags), figsize=(4.2 * len(tags), 3.2), squeeze=False)
    for ax, tag in zip(axes[0], tags, strict=True):
        steps, values = zip(*scalars[tag], strict=True)
        ax.plot(steps, values, marker="." if len(steps) < 30 else None)
        ax.set_title(tag)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
