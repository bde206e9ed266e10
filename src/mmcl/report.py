"""The run report: matrix heat-maps, accuracy curves and the summary table (HTML + PNG)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from mmcl.metrics import SUMMARY_KEYS
from mmcl.results import RunDir, atomic_write_bytes, atomic_write_text


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def _short(v) -> str:
    """A stage value for a table cell: numbers rounded, long lists cut."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10000:
        return f"{v:,}"
    if isinstance(v, list) and len(v) > 6:
        return ", ".join(_short(x) for x in v[:3]) + f", ... ({len(v)} values), " + _short(v[-1])
    if isinstance(v, list):
        return ", ".join(_short(x) for x in v)
    return str(v)


def stage_value(key: str, v) -> str:
    """A stage's recorded value for reading (durations `*_s` as durations)."""
    if key.endswith("_s") and isinstance(v, (int, float)) and not isinstance(v, bool):
        return seconds(v)
    return _short(v)


def summary_rows(metrics: dict, label: str = "") -> list[list[str]]:
    rows = []
    for name, s in metrics["summary"].items():
        rows.append([label or metrics["method"], name] + [_fmt(s.get(k)) for k in SUMMARY_KEYS])
    return rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[c])) for r in [header] + rows) for c in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) if c < 2 else str(v).rjust(w)  # noqa: E731
                               for c, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


SUMMARY_HEADER = ["run", "protocol", *SUMMARY_KEYS]


def compare_table(rows: list[dict]) -> str:
    """One table: runs x summary metrics, one line per run and matrix (protocol); `rows` as `mmcl.compare` gives."""
    return text_table(SUMMARY_HEADER, [[r["run"], r["protocol"]] + [_fmt(r[k]) for k in SUMMARY_KEYS] for r in rows])


def seconds(v: float | None) -> str:
    """A duration for reading: 0.42 s, 12.3 s, 110.9 s, 18 min 31 s, 2 h 05 min."""
    if v is None:
        return "–"
    if v < 10:
        return f"{v:.2f} s"
    if v < 600:
        return f"{v:.1f} s"
    if v < 3600:
        return f"{int(v // 60)} min {int(round(v % 60)):02d} s"
    return f"{int(v // 3600)} h {int(round(v % 3600 / 60)):02d} min"


def timing_text(t: dict) -> str:
    """metrics.json's `timing` as a sentence: total 110.9 s (train 80.2 s, evaluation 3.12 s), 1,204 samples/s."""
    rate = t.get("samples_per_s")
    return (f"total {seconds(t.get('total_s'))} (training {seconds(t.get('train_s'))}, evaluation "
            f"{seconds(t.get('eval_s'))})" + (f", {rate:,.0f} training samples/s" if rate else ""))


def _plot_matrix(ax, A, names, title):
    import numpy as np

    M = np.array([[np.nan if v is None else v for v in row] for row in A], dtype=float)
    im = ax.imshow(M, vmin=0, vmax=1, cmap="viridis")
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            if not np.isnan(M[i, j]):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if M[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("evaluated on experience")
    ax.set_ylabel("after training experience")
    ax.set_title(title)
    return im


def _png(fig, path: Path) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return data


def render(run_dir: str | Path) -> Path:
    """(Re)write report.html and its PNGs from metrics.json; returns the HTML path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = RunDir(run_dir, writer=False)
    m = run.read_metrics()
    names = [e["name"] for e in m["experiences"]]
    T = len(names)
    images: list[tuple[str, bytes]] = []
    for name, A in m["matrices"].items():
        fig, ax = plt.subplots(figsize=(1.0 + 0.7 * T, 0.8 + 0.6 * T))
        fig.colorbar(_plot_matrix(ax, A, names, name.replace("_", "-")), ax=ax, fraction=0.046)
        images.append((f"matrix_{name}.png", _png(fig, run.path / f"matrix_{name}.png")))
        plt.close(fig)

    fig, axes = plt.subplots(1, len(m["matrices"]), figsize=(5.5 * len(m["matrices"]), 3.8), squeeze=False)
    for ax, (name, A) in zip(axes[0], m["matrices"].items()):
        xs = list(range(1, T + 1))
        nan = float("nan")
        for j in range(T):  # a cell without a score (no questions of the kind in that step) is a gap
            ax.plot(xs[j:], [nan if A[i][j] is None else A[i][j] for i in range(j, T)], marker="o", ms=3, lw=1,
                    label=names[j])
        seen = [[v for v in A[i][: i + 1] if v is not None] for i in range(T)]
        ax.plot(xs, [sum(v) / len(v) if v else nan for v in seen], "k--", lw=2, label="mean over seen")
        ax.set_ylim(0, 1.02)
        ax.set_xticks(xs)
        ax.set_xlabel("after experience")
        ax.set_ylabel("accuracy")
        ax.set_title(name.replace("_", "-"))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    images.append(("curves.png", _png(fig, run.path / "curves.png")))
    plt.close(fig)

    head = "".join(f"<th>{html.escape(h)}</th>" for h in SUMMARY_HEADER[1:])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r[1:]) + "</tr>" for r in summary_rows(m))
    exps = "".join(
        f"<tr><td>{i}</td><td>{html.escape(e['name'])}</td><td>{html.escape(e.get('modality') or e.get('scenario', ''))}</td>"
        f"<td>{html.escape(', '.join(e.get('classes', [])))}</td></tr>" for i, e in enumerate(m["experiences"]))
    timing = "Time: " + timing_text(m["timing"]) + "."
    imgs = "".join(
        f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(b).decode()}"><figcaption>{n}</figcaption></figure>'
        for n, b in images)
    title = f"mmcl · {m['benchmark']} · {m['method']} · seed {m['seed']}"
    unscored = "".join(f"<p>No <b>{html.escape(n)}</b> matrix: the test data have no sample of its kind.</p>"
                       for n in m.get("unscored", []))
    stages = "".join(f"<h2>Stage: {html.escape(name)}</h2><table>" + "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(stage_value(k, v))}</td></tr>" for k, v in info.items())
        + "</table>" for name, info in m.get("stages", {}).items())
    unscored += stages
    skipped = (m.get("stream_info") or {}).get("data_errors") or {}
    if skipped.get("skipped"):
        files = "".join(f"<li>{html.escape(str(f))}</li>" for f in skipped.get("files", [])[:20])
        unscored += (f"<h2>Input files left out</h2><p>{skipped['skipped']} file(s) could not be used and were left "
                     f"out (data.on_error=skip); all of them: data_errors.txt.</p><ul>{files}</ul>")
    notes = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in m.get("eval_notes", {}).items())
    if notes:
        unscored += f"<p>Last evaluation: {html.escape(notes)}.</p>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
figure{{display:inline-block;margin:0.5em}}img{{max-width:100%}}.left td,.left th{{text-align:left}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>setting <b>{html.escape(m['setting'])}</b>, {T} experiences, world size {m.get('world_size', 1)}. {html.escape(timing)}</p>
<h2>Summary</h2><table><tr>{head}</tr>{body}</table>
<p>last_acc = mean of the last row; avg_inc_acc = mean over rows of the mean over trained columns; forgetting, bwt,
fwt as defined in DESIGN.md section 4 (– = undefined for this stream).</p>
{unscored}<h2>Matrices and curves</h2>{imgs}
<h2>Experiences</h2><table class=left><tr><th>#</th><th>name</th><th>modality / scenario</th><th>classes</th></tr>{exps}</table>
</body></html>"""
    out = run.path / "report.html"
    atomic_write_text(out, page)
    return out


# -- the comparison page ------------------------------------------------------------------------
HEADLINE = ("last_acc", "avg_inc_acc", "forgetting", "bwt")  # the bar chart's metrics (both settings)
_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}tr:nth-child(even){background:#f6f6f6}td{white-space:nowrap}
figure{margin:0.5em 0}img{max-width:100%}.note{color:#555}"""


def _mean_std(vals: list) -> tuple[float | None, float | None]:
    import statistics

    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def _pm(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def _seen_curve(A) -> list[float]:
    """Mean score over the experiences trained so far, after each experience."""
    out = []
    for i, row in enumerate(A):
        v = [x for x in row[: i + 1] if x is not None]
        out.append(sum(v) / len(v) if v else float("nan"))
    return out


def _img_tag(name: str, data: bytes) -> str:
    return (f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
            f"<figcaption>{html.escape(name)}</figcaption></figure>")


def _fig_png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _group_figures(by_label: dict[str, list[dict]], protocols: list[str]) -> list[tuple[str, bytes]]:
    """Bars (mean ± std over seeds), curves overlaid, matrices side by side: (caption, PNG) of one group."""
    import warnings

    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(by_label)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    images = []
    # 1. bars: one panel per headline metric; per label one bar per protocol, error bars = std over seeds
    fig, axes = plt.subplots(1, len(HEADLINE), figsize=(max(10.0, 1.1 * len(labels) * len(HEADLINE)), 3.6),
                             squeeze=False)
    width = 0.8 / len(protocols)
    for ax, key in zip(axes[0], HEADLINE):
        for k, p in enumerate(protocols):
            stats = [_mean_std([m["summary"].get(p, {}).get(key) for m in by_label[lab]]) for lab in labels]
            xs = np.arange(len(labels)) + (k - (len(protocols) - 1) / 2) * width
            ax.bar(xs, [np.nan if mu is None else mu for mu, _ in stats], width,
                   yerr=[0 if sd is None else sd for _, sd in stats], capsize=3, label=p.replace("_", "-"),
                   color=colors[k % len(colors)])
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(key)
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(axis="y", alpha=0.3)
        if key in ("last_acc", "avg_inc_acc"):
            ax.set_ylim(0, 1.02)
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    images.append(("summary metrics per method and protocol (bars: mean over seeds; error bars: std)",
                   _fig_png(fig)))
    plt.close(fig)
    # 2. curves: mean over the experiences seen so far, after each experience; one line per label
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.5 * len(protocols), 3.8), squeeze=False)
    for ax, p in zip(axes[0], protocols):
        for c, lab in enumerate(labels):
            curves = [_seen_curve(m["matrices"][p]) for m in by_label[lab] if p in m["matrices"]]
            if not curves:
                continue
            T = min(len(cv) for cv in curves)
            arr = np.array([cv[:T] for cv in curves], dtype=float)
            xs = np.arange(1, T + 1)
            mu = np.nanmean(arr, axis=0)
            ax.plot(xs, mu, marker="o", ms=3, lw=1.5, label=lab, color=colors[c % len(colors)])
            if len(curves) > 1:
                sd = np.nanstd(arr, axis=0, ddof=1)
                ax.fill_between(xs, mu - sd, mu + sd, alpha=0.15, color=colors[c % len(colors)])
        ax.set_ylim(0, 1.02)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("after experience")
        ax.set_ylabel("mean accuracy over experiences seen")
        ax.set_title(p.replace("_", "-"))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    images.append(("accuracy after each experience (mean over the experiences seen; band: std over seeds)",
                   _fig_png(fig)))
    plt.close(fig)
    # 3. matrices side by side, per protocol: the mean over seeds (the first seed's if their orders differ)
    for p in protocols:
        have = [lab for lab in labels if any(p in m["matrices"] for m in by_label[lab])]
        if not have:
            continue
        ncol = min(4, len(have))
        nrow = -(-len(have) // ncol)
        T = max(len(by_label[lab][0]["experiences"]) for lab in have)
        fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * (1.2 + 0.55 * T), nrow * (1.0 + 0.5 * T)),
                                 squeeze=False)
        for ax in axes.flat[len(have):]:
            ax.axis("off")
        for ax, lab in zip(axes.flat, have):
            runs = [m for m in by_label[lab] if p in m["matrices"]]
            names = [e["name"] for e in runs[0]["experiences"]]
            same = [m for m in runs if [e["name"] for e in m["experiences"]] == names]
            A = np.array([[[np.nan if v is None else v for v in row] for row in m["matrices"][p]] for m in same],
                         dtype=float)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a cell no seed evaluated stays empty
                M = np.nanmean(A, axis=0)
            how = f"mean of {len(same)} seeds" if len(same) > 1 else f"seed {same[0]['seed']}"
            if len(same) < len(runs):
                how += " (other seeds: another order)"
            _plot_matrix(ax, [[None if np.isnan(v) else float(v) for v in row] for row in M], names,
                         f"{lab}\n{how}")
            ax.title.set_fontsize(9)
        fig.tight_layout()
        images.append((f"accuracy matrices, {p.replace('_', '-')}", _fig_png(fig)))
        plt.close(fig)
    return images


def compare_page(runs: list[tuple[str, dict]], out: str | Path, title: str = "mmcl comparison",
                 note: str = "") -> Path:
    """Write one self-contained HTML page comparing runs: `runs` = (label, metrics.json content); runs with the
    same label are seeds of one method (mean ± std). Runs of different settings or benchmarks go to separate
    sections, never into one chart."""
    import matplotlib

    matplotlib.use("Agg")

    groups: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for label, m in runs:
        groups.setdefault((m["setting"], m["benchmark"]), {}).setdefault(label, []).append(m)
    parts = []
    if len(groups) > 1:
        parts.append(f"<p class=note>These runs are of {len(groups)} different benchmarks or settings; each has its "
                     f"own section below, and numbers are not compared across sections.</p>")
    for (setting, bench), by_label in groups.items():
        protocols = list(dict.fromkeys(p for ms in by_label.values() for m in ms for p in m["summary"]))
        n_runs = sum(len(ms) for ms in by_label.values())
        parts.append(f"<h2>{html.escape(bench)} <small>(setting {html.escape(setting)}, {n_runs} runs)</small></h2>")
        head = "".join(f"<th>{h}</th>" for h in ["method", "protocol", "seeds", *SUMMARY_KEYS, "time / run"])
        body = []
        for lab, ms in by_label.items():
            seeds = ", ".join(str(m["seed"]) for m in ms)
            t = _mean_std([m["timing"].get("total_s") for m in ms])[0]
            for p in protocols:
                cells = [_pm(*_mean_std([m["summary"].get(p, {}).get(k) for m in ms])) for k in SUMMARY_KEYS]
                body.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in
                                             [lab, p.replace("_", "-"), seeds, *cells, seconds(t)]) + "</tr>")
        parts += [_img_tag(cap, png) for cap, png in _group_figures(by_label, protocols)]
        parts.append(f"<table><tr>{head}</tr>{''.join(body)}</table>")
        parts.append("<p class=note>mean ± std over seeds (± only where there are several); – = undefined for "
                     "this stream. Definitions: DESIGN.md section 4.</p>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>{f"<p>{html.escape(note)}</p>" if note else ""}
{''.join(parts)}
</body></html>"""
    out = Path(out)
    atomic_write_text(out, page)
    return out
