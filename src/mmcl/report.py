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
    if isinstance(v, list) and len(v) > 6:
        return ", ".join(_short(x) for x in v[:3]) + f", ... ({len(v)} values), " + _short(v[-1])
    if isinstance(v, list):
        return ", ".join(_short(x) for x in v)
    return str(v)


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


def compare_table(run_dirs: list[str]) -> str:
    """One table: runs x summary metrics, one line per run and matrix (protocol)."""
    rows = []
    for d in run_dirs:
        m = RunDir(d, writer=False).read_metrics()
        rows += summary_rows(m, f"{Path(d).name} ({m['benchmark']}/{m['method']})")
    return text_table(SUMMARY_HEADER, rows)


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
    timing = ", ".join(f"{k} = {v}" for k, v in m["timing"].items())
    imgs = "".join(
        f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(b).decode()}"><figcaption>{n}</figcaption></figure>'
        for n, b in images)
    title = f"mmcl · {m['benchmark']} · {m['method']} · seed {m['seed']}"
    unscored = "".join(f"<p>No <b>{html.escape(n)}</b> matrix: the test data have no sample of its kind.</p>"
                       for n in m.get("unscored", []))
    stages = "".join(f"<h2>Stage: {html.escape(name)}</h2><table>" + "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_short(v))}</td></tr>" for k, v in info.items())
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
figure{{display:inline-block;margin:0.5em}}img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>setting <b>{html.escape(m['setting'])}</b>, {T} experiences, world size {m.get('world_size', 1)}. {html.escape(timing)}</p>
<h2>Summary</h2><table><tr>{head}</tr>{body}</table>
<p>last_acc = mean of the last row; avg_inc_acc = mean over rows of the mean over trained columns; forgetting, bwt,
fwt as defined in DESIGN.md section 4 (– = undefined for this stream).</p>
{unscored}<h2>Matrices and curves</h2>{imgs}
<h2>Experiences</h2><table><tr><th>#</th><th>name</th><th>modality / scenario</th><th>classes</th></tr>{exps}</table>
</body></html>"""
    out = run.path / "report.html"
    atomic_write_text(out, page)
    return out
