"""The f-study report: every job's ``result.json`` under a dir -> ``report.md`` (a table like the paper's
Table 6) and two plots: quality vs training steps per f (Fig. 5) and quality vs sampling throughput (Fig. 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from ldmkit import modeldir
from ldmkit.atomic import atomic_path, write_text
from ldmkit.errors import UserError

# quality measures, best first: FID (lower is better) when Inception weights exist, else the shapes scorer
QUALITY = (("fid", "FID", False), ("kid_mean", "KID", False), ("shape_acc", "shape accuracy", True),
           ("color_acc", "colour accuracy", True))


def collect(root: Path) -> list[dict]:
    """Every result.json below ``root``, sorted by f."""
    results = [modeldir.read_json(p) for p in sorted(Path(root).rglob("result.json"))]
    return sorted(results, key=lambda r: r["f"])


def _fmt(value: Any, digits: int = 3) -> str:
    """A table cell."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def measures(results: list[dict]) -> list[tuple[str, str, bool]]:
    """The quality measures present in every checkpoint of every job."""
    rows = [c for r in results for c in r["checkpoints"]]
    return [q for q in QUALITY if rows and all(q[0] in c for c in rows)]


def table(results: list[dict]) -> str:
    """The markdown table: f, latent shape, params, throughputs and quality at each checkpoint."""
    steps = sorted({c["step"] for r in results for c in r["checkpoints"]})
    shown = measures(results)
    base = next((r["train_samples_per_s"] for r in results if r["f"] == 1 and r["train_samples_per_s"]), None)
    head = ["f", "latent", "params", "train samples/s", "× LDM-1", "sampling samples/s"]
    head += [f"{label} @{s}" for key, label, _ in shown for s in steps]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        at = {c["step"]: c for c in r["checkpoints"]}
        final = next((t for t in r["throughput"] if t["sampler_steps"] == r["sampler_steps"]), None)
        sampling = (final or (r["checkpoints"][-1] if r["checkpoints"] else {})).get("sampling_samples_per_s")
        ratio = r["train_samples_per_s"] / base if base and r["train_samples_per_s"] else None
        cells = [f"LDM-{r['f']}", "×".join(map(str, r["latent_shape"])), _fmt(r["params"]),
                 _fmt(r["train_samples_per_s"]), _fmt(ratio), _fmt(sampling)]
        cells += [_fmt(at.get(s, {}).get(key)) for key, _, _ in shown for s in steps]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(results: list[dict], out: Path) -> list[Path]:
    """Fig. 5 (quality vs training steps per f) and Fig. 6 (quality vs sampling throughput) as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = measures(results)
    if not shown:
        return []
    written = []
    for name, x_of, points, xlabel in (
        ("fig5_quality_vs_steps.png", lambda c: c["step"], "checkpoints", "training steps"),
        ("fig6_quality_vs_throughput.png", lambda c: c.get("sampling_samples_per_s"), "throughput",
         "sampling throughput (samples/s)"),
    ):
        fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4), squeeze=False)
        for ax, (key, label, higher_better) in zip(axes[0], shown, strict=True):
            values = []
            for r in results:
                pts = [(x_of(c), c[key]) for c in r[points] if key in c and x_of(c) is not None]
                if pts:
                    xs, ys = zip(*sorted(pts), strict=True)
                    ax.plot(xs, ys, marker="o", label=f"LDM-{r['f']}")
                    values += ys
            if not higher_better and values and min(values) > 0:
                ax.set_yscale("log")  # distances span orders of magnitude across f
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
            if points == "throughput":
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        written.append(out / name)
    return written


def write_report(root: Path) -> Path:
    """report.md and the plots in ``root`` from its jobs' result.json files."""
    root = Path(root)
    results = collect(root)
    if not results:
        raise UserError(f"{root}: no result.json below it (run `ldmkit f-study -m f=...` with out={root})")
    figures = plots(results, root)
    first = results[0]
    notes = [f"# f-study report ({len(results)} jobs)", "",
             f"{first['ldm_steps']} train-ldm steps per f, {first['eval_samples']} samples per evaluation, "
             f"{first['sampler']} with {first['sampler_steps']} steps; train samples/s is measured by train-ldm "
             "after warm-up, sampling samples/s by eval-fid (sampling only). Paper: LDM-4…16 give the best quality "
             "for a training budget, LDM-1 trains slowest (Sec. 4.1, Fig. 5-6).", "", table(results), ""]
    skipped = {c.get("skipped") for r in results for c in r["checkpoints"] if c.get("skipped")}
    if skipped:
        notes += [f"FID/KID skipped: {skipped.pop()}", ""]
    notes += [f"![{p.stem}]({p.name})" for p in figures]
    write_text(root / "report.md", "\n".join(notes) + "\n")
    return root / "report.md"


class ReportCallback(Callback):
    """Hydra callback: write the report into the sweep dir when a multirun ends (or the run dir of one job)."""

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        """After every job of ``-m``."""
        self._write(Path(config.hydra.sweep.dir))

    def on_run_end(self, config, **kwargs: Any) -> None:
        """After a single job."""
        self._write(Path(config.hydra.run.dir))

    @staticmethod
    def _write(root: Path) -> None:
        """Write it, saying where; never fail the finished jobs over the report."""
        try:
            print(f"report: {write_report(root)}")
        except UserError as exc:
            print(f"report: not written ({exc})")
