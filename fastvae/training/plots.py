"""The run directory's PNG: KL, MI, AU and NLL/ELBO over training (matplotlib, Agg backend)."""
from __future__ import annotations


def plot_history(history: list, path: str, title: str = "") -> None:
    """Writes a 2x2 figure from metrics records (the dicts written to metrics.jsonl)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    def series(split, key):
        rows = [(r["step"], r[key]) for r in history if r.get("split") == split and r.get(key) is not None]
        return [s for s, _ in rows], [v for _, v in rows]

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = [
        (axes[0, 0], "KL (nats per sentence)", [("train", "kl"), ("valid", "kl")]),
        (axes[0, 1], "mutual information I(x; z)", [("valid", "mi"), ("valid", "mi_batch")]),
        (axes[1, 0], "active units", [("valid", "au")]),
        (axes[1, 1], "negative ELBO / NLL (per sentence)", [("train", "elbo"), ("valid", "elbo"),
                                                            ("valid", "nll"), ("test", "nll"), ("test", "elbo")]),
    ]
    for ax, label, lines in panels:
        drawn = False
        for split, key in lines:
            xs, ys = series(split, key)
            if xs:
                marker = "*" if split == "test" else "o"
                ax.plot(xs, ys, marker=marker, markersize=4 if split != "test" else 10, label=f"{split} {key}")
                drawn = True
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("training step")
        if drawn:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    # phase boundaries (pretrain -> fb)
    phases = []
    for r in history:
        if r.get("split") == "valid" and (not phases or phases[-1][1] != r.get("phase")):
            phases.append((r["step"], r.get("phase")))
    for step, _ in phases[1:]:
        for ax in axes.flat:
            ax.axvline(step, color="grey", linestyle=":", linewidth=1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
