"""`mmcl run | list | report | compare | sweep | data`: the command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmcl.config import DEFAULT_CONFIG, ConfigError, bundled_configs, load_config


def _run(args) -> int:
    from mmcl import api
    from mmcl import distributed as dist
    from mmcl.engine import Interrupted
    from mmcl.report import SUMMARY_HEADER, stage_value, summary_rows, text_table, timing_text

    if args.resume:
        out = args.resume
        if args.out and Path(args.out) != Path(out):
            raise ConfigError(f"--resume {out} continues the run in its own directory; --out {args.out} cannot "
                              f"move it (copy the directory first, then --resume the copy)")
    else:
        out = args.out or str(Path("runs") / (Path(args.config).stem if args.config else DEFAULT_CONFIG))
    main_rank, together = True, False
    try:
        metrics = api.run(args.config, args.overrides, out, resume=bool(args.resume), force=args.force).metrics
        main_rank, together = dist.is_main(), True
    except Interrupted as e:  # every rank stops at the same step
        together = True
        if dist.is_main():
            print(f"\ninterrupted: state saved in {out}; continue with: mmcl run --resume {out}", file=sys.stderr)
        return e.exit_code
    finally:
        dist.cleanup(together)
    if main_rank:
        print()
        print(text_table(SUMMARY_HEADER, summary_rows(metrics, f"{metrics['benchmark']}/{metrics['method']}")))
        for name, info in metrics.get("stages", {}).items():  # e.g. what the base model was trained on
            print(f"{name}: " + ", ".join(f"{k}={stage_value(k, v)}" for k, v in info.items()
                                          if not isinstance(v, (list, dict))))
        print(f"\ntime: {timing_text(metrics['timing'])}")
        rep = Path(out) / "report.html"
        print(f"run directory: {out}" + (f"\nreport: {rep.resolve()}" if rep.exists() else ""))
    return 0


def _list(args) -> int:
    from mmcl.data import BENCHMARKS
    from mmcl.methods import METHODS

    def first_line(obj) -> str:
        doc = (sys.modules[obj.__module__].__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""

    from mmcl.settings import SETTINGS

    print("settings:")
    for n, cls in SETTINGS.items():
        print(f"  {n:12s} {first_line(cls)}")
    print("methods:")
    for n, cls in sorted(METHODS.items()):
        print(f"  {n:12s} {first_line(cls)}")
    print("benchmarks:")
    for n, (_, fn) in sorted(BENCHMARKS.items()):
        shared = sum(f.__module__ == fn.__module__ for _, f in BENCHMARKS.values()) > 1
        print(f"  {n:12s} {fn.__doc__.strip().splitlines()[0] if shared and fn.__doc__ else first_line(fn)}")
    print("configs:")
    for n in bundled_configs():
        print(f"  {n}{'   (default)' if n == DEFAULT_CONFIG else ''}")
    return 0


def _report(args) -> int:
    from mmcl.report import render

    print(render(args.run_dir))
    return 0


def _compare(args) -> int:
    from mmcl import api
    from mmcl.report import compare_page, compare_table

    runs = [api.load_run(d) for d in args.run_dirs]
    kinds = api.groups(runs)
    if len(kinds) > 1:
        print("mmcl: warning: these runs are of different benchmarks or settings ("
              + "; ".join(f"{b} ({s})" for s, b in kinds) + "); their numbers do not compare"
              + ("; the page shows each in its own section" if args.html else ""), file=sys.stderr)
    print(compare_table(api.compare(runs)))
    if args.html:
        page = compare_page(list(zip(api.labels(runs), (r.metrics for r in runs))), args.html,
                            title="mmcl compare: " + ", ".join(r.path.name for r in runs)[:200])
        print(f"page: {page.resolve()}")
    return 0


def _sweep(args) -> int:
    from mmcl.sweep import Sweep, SweepFailed, read_spec

    spec = read_spec(args.spec)
    try:
        res = Sweep(spec, args.out, jobs=args.jobs, backend=args.backend, address=args.address,
                    finished_only=args.finished_only).run()
    except SweepFailed as e:
        print(f"mmcl: error: {e}", file=sys.stderr)
        return 1
    from mmcl.sweep import markdown

    print()
    print(markdown(res))
    if not args.finished_only:
        print(f"results: {Path(args.out) / 'results.md'}, page: {(Path(args.out) / 'results.html').resolve()}")
    if args.doc:
        from mmcl.sweep import write_doc

        how = f"--jobs {args.jobs}" if args.backend == "local" else f"--backend {args.backend}"
        if args.finished_only:
            how = "--finished-only"
        cmd = f"mmcl sweep {args.spec} --out {args.out} {how} --doc {args.doc}"
        write_doc(args.doc, markdown(res), cmd, name=Path(args.spec).stem)
        print(f"tables written into {args.doc}")
    return 0


def _data(args) -> int:
    """Generate (once) and validate a benchmark's data, then print its manifest."""
    import json

    from mmcl.data import mm5

    if args.benchmark == "msvqa-mini":
        return _data_msvqa(args)
    if args.benchmark != "mm5":
        if Path(args.benchmark).suffix in (".yaml", ".yml") or args.benchmark in bundled_configs():
            cfg = load_config(args.benchmark, args.overrides)
            if cfg["setting"] == "scenario":
                return _data_scenario(cfg, args.json)
            return _data_check(args)
        raise ConfigError(f"mmcl data: 'mm5' and 'msvqa-mini' generate data, a config (bundled name or YAML file) "
                          f"has its stream checked; got '{args.benchmark}'")
    import contextlib

    from mmcl.data.mm5.common import files_digest

    cfg = load_config("mm5-er", args.overrides)
    p = mm5.MM5Params(**{k: v for k, v in cfg["benchmark"].items() if k != "name"})
    rows, manifests = [], []
    for modality in p.modalities:
        with contextlib.redirect_stdout(sys.stderr):  # generators' progress: stdout carries only the result
            root, man = mm5.ensure_data(modality, p)
            samples, labels, split = mm5.generator(modality).load(root)  # decodes every file
        if files_digest(root, man["files"])[0] != man["sha256"]:  # and checks they are the files generated
            raise ConfigError(f"{root}: files changed since they were generated (sha256 differs from manifest.json); "
                              f"delete the folder to generate them again")
        rows.append([modality, str(len(man["classes"])), str(int((split == 0).sum())), str(int((split == 1).sum())),
                     f"{man['bytes'] / 1e6:.1f} MB", f"{man['seconds']:.1f}s", man["sha256"][:16], str(root)])
        manifests.append({k: v for k, v in man.items() if k != "files"})
        if not args.json:
            print(f"{modality}: {', '.join(man['classes'])}\n  {man['notes']}")
    if args.json:
        print(json.dumps(manifests, indent=1))
        return 0
    from mmcl.report import text_table

    print()
    print(text_table(["modality", "classes", "train", "test", "size", "generated in", "sha256", "directory"], rows))
    return 0


def _data_scenario(cfg: dict, as_json: bool) -> int:
    """Read and check a scenario config's data (no training); print its steps, images and questions."""
    import json

    from mmcl.report import text_table
    from mmcl.settings import build_stream

    stream = build_stream(cfg)

    def counts(data) -> dict:
        return {"images": len(set(data.image_index.tolist())), "questions": len(data),
                "grounding": int(data.grounding.sum()), "boxes": sum(1 for b in data.boxes if b)}

    summary = {"benchmark": cfg["benchmark"]["name"], "protocol": stream.info.get("protocol"),
               "steps": [{"name": e.name, "scenario": e.scenario, "train": counts(e.train), "test": counts(e.test)}
                         for e in stream],
               "base": ({"scenario": stream.info.get("base_scenario"), **counts(stream.pretrain)}
                        if stream.pretrain is not None else None),
               "left_out": stream.info.get("left_out", {})}
    if as_json:
        print(json.dumps(summary, indent=1))
        return 0
    rows = [[s["name"], s["scenario"], *(str(s[k][c]) for k in ("train", "test") for c in ("images", "questions",
                                                                                               "grounding"))]
            for s in summary["steps"]]
    print(text_table(["step", "scenario", "train img", "train q", "train grounding", "test img", "test q",
                      "test grounding"], rows))
    b = summary["base"]
    print("\nbase model: " + (f"trained on scenario '{b['scenario']}' ({b['images']} images, {b['questions']} questions)"
                              if b else "no base scenario: the model as built (set benchmark.base_scenario)"))
    for split, per in summary["left_out"].items():
        print(f"left out of {split} (scenarios that are not steps): " + ", ".join(f"{k} {v}" for k, v in per.items()))
    return 0


def _data_msvqa(args) -> int:
    """Generate (once) msvqa-mini for `benchmark.*` overrides and print its manifest."""
    import json

    from mmcl.data.msvqa import ensure_msvqa_mini_for
    from mmcl.report import text_table

    b = load_config("msvqa-mini-finetune", args.overrides)["benchmark"]
    root, man = ensure_msvqa_mini_for(b)
    if args.json:
        print(json.dumps({k: v for k, v in man.items() if k != "files"}, indent=1))
        return 0
    rows = []
    for sc, st in man["stats"].items():
        tr, te = st["train"], st["test"]
        rows.append([sc, str(tr["images"]), str(te["images"]), str(tr["questions"]), str(te["questions"]),
                     ",".join(f"{x:.2f}" for x in tr["mean_rgb"]), f"{tr['contrast']:.3f}",
                     f"{tr['objects_per_image']:.1f}", ", ".join(man["categories"][sc])])
    print(text_table(["scenario", "train img", "test img", "train q", "test q", "mean rgb", "contrast",
                      "objects/img", "categories"], rows))
    print(f"\nquestion types: {', '.join(next(iter(man['stats'].values()))['train']['by_type'])}; "
          f"boxes: {man['box_format']}")
    print(f"{man['bytes'] / 1e6:.1f} MB, generated in {man['seconds']:.1f}s, sha256 {man['sha256'][:16]}, "
          f"seed {man['seed']}\ndirectory: {root}")
    return 0


def _data_check(args) -> int:
    """Decode (once), validate and encode the data of a config's stream without training; print it."""
    from mmcl.settings import build_stream
    from mmcl.report import text_table

    cfg = load_config(args.benchmark, args.overrides)
    stream = build_stream(cfg)
    rows = [[e.name, e.modality, str(len(e.classes)), str(len(e.train)), str(len(e.test)),
             ", ".join(stream.class_names[c] for c in e.classes[:3]) + (" ..." if len(e.classes) > 3 else "")]
            for e in stream]
    print(text_table(["experience", "modality", "classes", "train", "test", "anchors"], rows))
    if stream.info.get("encoders"):
        print("encoders: " + ", ".join(f"{m} {e}" for m, e in stream.info["encoders"].items()))
    for src in stream.info.get("sources", []):
        how = "features from the cache" if src.get("cached") else "every file decoded and checked"
        print(f"{src['modality']} source {src['where']}: {src['files']} files, {src['skipped']} left out ({how})")
    if stream.data_errors:
        print(f"\n{len(stream.data_errors)} files left out (data.on_error=skip):")
        print("\n".join(f"  {ln}" for ln in stream.data_errors))
    if args.json:
        import json

        print(json.dumps(stream.info, indent=1))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmcl", description="multimodal continual learning")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a config (bundled name or YAML path) with key=value overrides")
    r.add_argument("config", nargs="?", help=f"bundled config name or YAML path (default: {DEFAULT_CONFIG})")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=0.01 seed=1")
    r.add_argument("--out", help="run directory (default: runs/<config name>)")
    r.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    r.add_argument("--force", action="store_true", help="overwrite a finished run in --out")
    r.set_defaults(fn=_run)
    sub.add_parser("list", help="methods, benchmarks and bundled configs").set_defaults(fn=_list)
    rp = sub.add_parser("report", help="re-render report.html of a run directory")
    rp.add_argument("run_dir")
    rp.set_defaults(fn=_report)
    d = sub.add_parser("data", help="generate and validate a benchmark's embedded data (mm5, msvqa-mini), or check the data "
                                    "of a config (bundled name or YAML file: decode, validate, summarise; no training)")
    d.add_argument("benchmark", help="mm5, msvqa-mini, or a config such as my_stream.yaml or msvqa-mini-finetune "
                                     "benchmark.name=llava-json benchmark.train=... benchmark.test=...")
    d.add_argument("overrides", nargs="*", help="e.g. benchmark.data_seed=1")
    d.add_argument("--json", action="store_true", help="print each manifest as JSON")
    d.set_defaults(fn=_data)
    sw = sub.add_parser("sweep", help="methods x seeds with hyper-parameters chosen on validation data; one table")
    sw.add_argument("spec", help="bundled sweep name (e.g. mm5) or a sweep YAML path")
    sw.add_argument("--out", required=True, help="sweep directory (runs, tuning.json, results.md)")
    sw.add_argument("--jobs", type=int, default=1, help="runs in parallel (each run's threads: spec overrides)")
    sw.add_argument("--backend", choices=("local", "ray"), default="local",
                    help="local: --jobs processes on this machine; ray: every run a Ray task (pip install 'mmcl[ray]')")
    sw.add_argument("--address", help="with --backend ray: join this Ray cluster (e.g. 10.0.0.1:6379) instead of "
                                      "starting a local instance")
    sw.add_argument("--doc", help="markdown file whose generated-tables section is replaced by the tables")
    sw.add_argument("--finished-only", action="store_true",
                    help="make no run: the tables of the runs finished so far (a sweep under way or stopped)")
    sw.set_defaults(fn=_sweep)
    c = sub.add_parser("compare", help="one table: runs x summary metrics, both protocols")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument("--html", metavar="OUT.html", help="also write a self-contained page: bar chart with error bars "
                                                       "over seeds, curves, matrices, table")
    c.set_defaults(fn=_compare)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options and positionals in any order (`mmcl run CONFIG --out DIR key=value`): argparse's intermixed
    parsing, per sub-command (it does not handle sub-parsers itself)."""
    p = parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    subs = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices
    if argv and argv[0] in subs:
        args = subs[argv[0]].parse_intermixed_args(argv[1:])
        args.cmd = argv[0]
        return args
    return p.parse_args(argv)  # no sub-command, --help, or an unknown one: argparse says so


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cmd == "run":  # the config is the one positional that is not key=value (`mmcl run seed=1 animals-er`)
        items = ([args.config] if args.config else []) + args.overrides
        names = [x for x in items if "=" not in x]
        if len(names) > 1:
            print(f"mmcl run: error: one config at a time, got {', '.join(names)} (overrides are key=value)",
                  file=sys.stderr)
            return 2
        args.config = names[0] if names else None
        args.overrides = [x for x in items if "=" in x]
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"mmcl: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"mmcl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # during set-up or a command without checkpoints: nothing to save
        print("mmcl: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        import errno

        if e.errno == errno.ENOSPC:
            print(f"mmcl: error: disk full ({e.filename or 'writing'}); files are written atomically, so the last "
                  f"checkpoint is intact: free space, then continue with --resume", file=sys.stderr)
            return 2
        if e.errno in (errno.EACCES, errno.EROFS, errno.ENOTDIR, errno.EISDIR):
            print(f"mmcl: error: {e.strerror}: {e.filename}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
