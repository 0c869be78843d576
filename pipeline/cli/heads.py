"""``vidprobe train``, ``evaluate`` and ``predict``: the commands that write and use head files."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from ..config import EVAL_SPLITS, SOLVERS
from ..data.manifest import FORMATS
from ..errors import ConfigError
from .common import (
    DEVICES,
    EXIT_OK,
    EXIT_PARTIAL,
    add_dataset_split,
    add_device,
    add_head_file,
    add_json,
    add_quiet,
    add_repeats,
    add_store,
    add_trust,
    check_order,
    command,
    path_kind,
    pick,
    print_json,
)

PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def add_train(sub: Any) -> None:
    from ..probe.heads.registry import head_names

    p = command(sub, cmd_train, "fit a head on pooled features of a store")
    add_store(p, "feature store folder")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="HEAD",
        help="head file to write: NAME.npz (recommended), NAME.skops or NAME.joblib (pickle); sidecar NAME.json "
        "beside it",
    )
    p.add_argument(
        "--head",
        default="logreg",
        choices=head_names(),
        help="logreg (default) | mlp | knn (cosine) | zeroshot (class-name prompts through the store encoder's "
        "open_clip text tower; no training) | attn (attentive probe over the frames) | gru (bidirectional GRU "
        "over the frames); attn and gru read every frame (no --pool), choose lr x weight decay on val in one "
        "batched sweep, and are saved as .npz",
    )
    p.add_argument(
        "--pool",
        default=None,
        help="mean | max | meanmax | meanstd | center | tdiff | trend | segK (e.g. seg4); default mean "
        "(attn and gru read the frames themselves: pool 'frames')",
    )
    p.add_argument(
        "--shots",
        type=int,
        metavar="K",
        help="few-shot: train on K clips per class (drawn with --shot-seed); val picks the hyperparameter, no refit",
    )
    p.add_argument("--shot-seed", type=int, default=0, help="seed of the few-shot draw (default 0)")
    p.add_argument(
        "--strict",
        action="store_true",
        help="a class with fewer training clips than --shots is an error, not a warning",
    )
    p.add_argument(
        "--solver",
        default="torch",
        choices=SOLVERS,
        help="logreg solver: torch L-BFGS (default, CPU or CUDA) or scikit-learn's",
    )
    add_device(p, f"logreg solver / zeroshot text tower: {DEVICES}", default="auto")
    p.add_argument(
        "--prompt",
        action="append",
        metavar="TEMPLATE",
        help="zeroshot prompt template with {label}; repeat to ensemble (default: 'a video of a person {label}.')",
    )
    _add_split_options(p)
    add_json(p, "results")
    add_quiet(p, "bar (a fit shows one on a terminal once it has run a few seconds)")


def _add_split_options(p: argparse.ArgumentParser) -> None:
    """Which clips ``train`` fits and tests on: the split's source and seed, its fractions, and repeats."""
    p.add_argument(
        "--splits-from",
        metavar="SOURCE",
        help="take train/test from another manifest or official split folder (e.g. UCF101 split 2 over a store "
        "extracted with split 1)",
    )
    add_dataset_split(p, "with --splits-from: UCF101/HMDB51 split number (default 1)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the split made when the manifest has none, and of the head (default 0)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of train videos held out to choose the hyperparameter when no val split exists",
    )
    p.add_argument(
        "--test-fraction", type=float, default=0.2, help="share held out for testing when the manifest has no splits"
    )
    add_repeats(
        p,
        "also refit on the split seeds seed+1 .. seed+K-1 and report mean ± std of the test scores beside the "
        "interval (with a manifest's splits only the head seed changes); the head saved is the first seed's",
    )


def cmd_train(args: argparse.Namespace) -> int:
    """Pool each clip's frame embeddings, pick the head's hyperparameter on the validation split (logreg: a
    coarse-to-fine C sweep, the CLIP protocol), refit on train+val, report test metrics and save the head with a JSON
    sidecar describing its inputs. Head files: .npz (recommended: plain arrays, loaded without pickle or scikit-learn),
    .skops (audited scikit-learn types) or .joblib (pickle; evaluate/predict then need --trust)."""
    from ..data.splits import SplitsFrom, SplitSpec
    from ..encoders.base import check_device
    from ..probe.heads.fitting import quiet_fits
    from ..probe.heads.settings import HeadConfig
    from ..probe.train import train_head
    from ..store.layout import check_writable

    check_order(
        args, {"store": "store", "output": "head"}, "vidprobe train STORE -o HEAD", "vidprobe train {output} -o {store}"
    )
    settings: dict[str, Any] = {"kind": args.head}
    if args.head in ("logreg", "zeroshot", "attn", "gru"):
        check_device(args.device, "--device")  # a CUDA device this machine lacks, before any work
        settings["device"] = args.device
    if args.head == "logreg":
        settings["solver"] = args.solver
    if args.head == "zeroshot" and args.prompt:
        settings["templates"] = args.prompt
    _notice_live_writers(args)
    splits_from = SplitsFrom(args.splits_from, split=args.dataset_split) if args.splits_from else None
    split = SplitSpec(
        **pick(args, "seed", "val_fraction", "test_fraction", "shots", "shot_seed"), splits_from=splits_from
    ).validate()
    if args.repeats < 1:
        raise ConfigError(f"--repeats {args.repeats}: must be >= 1 (fits over consecutive split seeds)")
    head = HeadConfig.from_dict(settings)
    check_writable(args.output, "write the head")  # and its sidecar, beside it: before any fit
    with quiet_fits(args.quiet or args.json):
        out = train_head(
            args.store, args.output, head=head, pool=args.pool, split=split, repeats=args.repeats, strict=args.strict
        )
    for line in out["warnings"]:
        print(f"vidprobe train: warning: {line}", file=sys.stderr)
    if args.json:
        print_json(out)
        return EXIT_OK
    _print_train(args, out)
    return EXIT_OK


def _print_train(args: argparse.Namespace, out: dict[str, Any]) -> None:
    chosen = " ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in out["hparams"].items() if k != "example_prompt"
    )
    print(
        f"head={out['head']} pool={out['pool']} {chosen} split={out['split_source']} "
        f"train={out['n_train']}{f' ({args.shots}-shot)' if args.shots else ''} val={out['n_val']} "
        f"test={out['n_test']} classes={len(out['classes'])}"
    )
    if out["selection"]:
        print(f"chosen: {_selection(out['selection'])}")
    if "test" in out:
        m = out["test"]
        print(f"test: {_scores(m)}")
        for label in m["absent_classes"]:
            print(f"note: no test clip of class {label}: its accuracy is not measured")
    if "repeats" in out:
        print(_repeats_line(out["repeats"]))
    sec = out["seconds"]
    fits = out["fit_info"].get("fits")
    print(
        f"time: {sec['total']:.1f} s (start-up {sec['startup']:.1f} s: imports; index {sec['index']:.1f} s, "
        f"pooling {sec['pool']:.1f} s, "
        f"{out['head']} fit {sec['fit']:.1f} s{f' over {fits} fits' if fits else ''}, test {sec['test']:.1f} s)"
    )
    print(f"saved {args.output} (+ {Path(args.output).with_suffix('.json').name})")


def _selection(sel: dict[str, Any]) -> str:
    """How the hyperparameter was chosen, in words: on val, by grouped k-fold CV, or fixed (and why)."""
    score = f", top1 {sel['score']:.3f}" if sel.get("score") is not None else ""
    if sel["how"] == "val":
        return f"on the validation split ({sel['n']} clips{score})"
    if sel["how"] == "cv":
        return f"by {sel['k']}-fold cross-validation grouped by video on {sel['n']} training clips{score}"
    return f"not chosen, fixed: {sel['reason']}"


def _interval(name: str, ci: dict[str, Any] | None) -> str:
    """``top1=0.833 [0.70, 0.92]``: the score and its 95 % interval (no interval where nothing was scored)."""
    if not ci or ci["value"] is None or ci["value"] != ci["value"]:
        return f"{name}=—"
    return f"{name}={ci['value']:.3f} [{ci['lo']:.2f}, {ci['hi']:.2f}]"


def _scores(m: dict[str, Any]) -> str:
    """A metrics record in one line: top-1 and mean-class with their 95 % intervals, top-5, n (videos)."""
    ci = m["top1_ci"]
    videos = f" ({ci['groups']} videos)" if ci["groups"] != ci["n"] else ""
    return (
        f"{_interval('top1', ci)}{_top5(m)} {_interval('mean-class', m['mean_class_ci'])} "
        f"n={m['n']}{videos} (95 % interval: {ci['method']})"
    )


def _repeats_line(rep: dict[str, Any]) -> str:
    """The spread over repeated fits: ``repeats: top1 0.812 ± 0.031 ... over seeds 0-4``."""
    seeds = rep["seeds"]
    span = f"{seeds[0]}-{seeds[-1]}" if seeds else "none scored"
    parts = [
        f"{k.replace('_acc', '').replace('_', '-')} {rep[k]['mean']:.3f} ± {rep[k]['std']:.3f}"
        for k in ("top1", "mean_class_acc")
    ]
    note = f" ({rep['note']})" if rep.get("note") else ""
    return (
        f"repeats: {', '.join(parts)} (mean ± std over {len(seeds)} of {rep['repeats']} fits, split seeds {span}){note}"
    )


def _top5(m: dict[str, Any]) -> str:
    """`` top5=...``, or nothing where it is omitted (5 classes or fewer: always 1.0)."""
    return "" if m.get("top5") is None else f" top5={m['top5']:.3f}"


def _notice_live_writers(args: argparse.Namespace) -> None:
    """A notice when a job is extracting into the store right now: training sees only its finished shards."""
    from ..store.lock import live_holders

    holders = live_holders(args.store) if Path(args.store).is_dir() else []
    if holders:
        who = "; ".join(f"{h.purpose} pid {h.pid} on {h.host}" for h in holders)
        print(
            f"vidprobe {args.command}: notice: {args.store} is being written now ({who}); "
            "this uses the shards finished so far",
            file=sys.stderr,
        )


def add_evaluate(sub: Any) -> None:
    p = command(sub, cmd_evaluate, "score a saved head on a store")
    add_store(p, None)
    add_head_file(p)
    add_trust(p)
    p.add_argument("--split", default="test", choices=EVAL_SPLITS, help="which clips to score (default test)")
    p.add_argument("--confusion", metavar="PNG", help="also write a confusion-matrix plot")
    add_repeats(
        p,
        "refused above 1: a saved head is one fit on one split (other seeds' test clips include its training "
        "clips); train with --repeats K, whose spread evaluate then reports",
    )
    add_json(p, "metrics")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a head on the store's test split (the same split training held out), or another split."""
    from ..probe.report import plot_confusion
    from ..probe.train import evaluate_head
    from ..store.layout import check_writable, write_error

    check_order(
        args, {"store": "store", "head": "head"}, "vidprobe evaluate STORE HEAD", "vidprobe evaluate {head} {store}"
    )
    if args.confusion and Path(args.confusion).suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError(
            f"--confusion {args.confusion}: the plot is written as {', '.join(PLOT_SUFFIXES)}; "
            f"name the file e.g. {Path(args.confusion).with_suffix('.png').name}"
        )
    if args.confusion:
        check_writable(args.confusion, "write the --confusion plot")
    if args.repeats != 1:
        raise ConfigError(
            f"--repeats {args.repeats}: a saved head is one fit on one split; scoring it on other seeds' splits "
            "would test it on clips it was trained on. Use `vidprobe train --repeats K` (evaluate reports its spread)"
        )
    out = evaluate_head(args.store, args.head, split=args.split, trust=args.trust)
    if out["unseen_classes"]:
        names = ", ".join(out["unseen_classes"][:10]) + (" ..." if len(out["unseen_classes"]) > 10 else "")
        print(
            f"vidprobe evaluate: warning: {len(out['unseen_classes'])} class(es) of the store were never seen "
            f"by the head ({names}); their clips count as wrong",
            file=sys.stderr,
        )
    if args.confusion:
        try:
            plot_confusion(
                out["confusion"], out["classes"], args.confusion, title=f"{Path(args.head).stem} on {args.split}"
            )
        except OSError as exc:  # checked writable above; a full disk or a folder removed since
            raise write_error(Path(args.confusion), "write the --confusion plot", exc) from None
    if args.json:
        print_json(out)
        return EXIT_OK
    print(f"{args.split}: {_scores(out)}")
    for label in out["absent_classes"]:
        print(f"note: no {args.split} clip of class {label}: its accuracy is not measured")
    if "train_repeats" in out:
        print(f"training {_repeats_line(out['train_repeats'])}")
    print(f"  {'class':30s} {'prec':>6s} {'recall':>6s} {'f1':>6s} {'n':>5s}")
    for label, r in sorted(out["report"].items()):
        if r["support"]:
            print(f"  {label:30s} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f} {r['support']:5d}")
    if args.confusion:
        print(f"confusion matrix -> {args.confusion}")
    return EXIT_OK


def _check_predict_order(args: argparse.Namespace) -> None:
    """``predict STORE HEAD`` (evaluate was meant) and ``predict VIDEO HEAD`` (the head comes first) answered with
    the command meant; then a store given as the head is refused like in the other commands."""
    heads = [v for v in args.videos if path_kind(v) == "head"]
    if heads and path_kind(args.head) != "head":
        rest = [shlex.quote(v) for v in args.videos if v != heads[0]]
        if path_kind(args.head) == "store":
            meant, why = f"vidprobe evaluate {shlex.quote(args.head)} {shlex.quote(heads[0])}", "a feature store"
        else:
            meant, why = f"vidprobe predict {shlex.quote(heads[0])} {' '.join([shlex.quote(args.head), *rest])}", ""
        raise ConfigError(
            f"{args.head} is {why or 'not a head file'} and {heads[0]} a head file: did you mean `{meant}`?"
        )
    check_order(args, {"head": "head"}, "vidprobe predict HEAD VIDEO...")


def add_predict(sub: Any) -> None:
    p = command(sub, cmd_predict, "label new videos with a saved head")
    add_head_file(p)
    add_trust(p)
    p.add_argument(
        "videos",
        nargs="+",
        metavar="SOURCE",
        help="what to label, as extract reads it: a video, a folder, a quoted glob, a .csv/.jsonl manifest, each "
        "local or at a URL (http(s)://, s3://, gs://)",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="PREDS",
        help="write one row per video to PREDS.csv or PREDS.jsonl as each finishes; a re-run with the same file "
        "skips the videos it holds (resumes); with --per-clip, the clips (path, start, end) it holds",
    )
    p.add_argument("-k", "--top-k", type=int, default=5, help="labels to show per video (default 5)")
    p.add_argument(
        "--per-clip", action="store_true", help="one row per clip window (windowed sampling) instead of per video"
    )
    p.add_argument(
        "--root", metavar="DIR", help="folder or folder URL that manifest paths are relative to (as for extract)"
    )
    p.add_argument("--format", default="auto", choices=FORMATS, help="how to read SOURCE (as for extract)")
    add_device(p, default="auto")
    p.add_argument(
        "--decode-timeout",
        type=float,
        metavar="S",
        help="seconds a video's decoder may go without progress before it is stopped and the video reported "
        "as failed (default: extract.decode_timeout's default, 120)",
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="per clip, each sampled frame's time and weight: an attn head's attention (sums to 1 per clip) or, "
        "for logreg on mean pooling, the frame's share of the winning logit; plus a timeline PNG per video",
    )
    p.add_argument(
        "--explain-dir",
        default=".",
        metavar="DIR",
        help="folder for the --explain timelines, VIDEO-HASH-explain.png, HASH from the video's absolute path so "
        "that videos named alike in different folders never share one (default: the current folder)",
    )
    add_json(p, "predictions (with -o: the run's counts)")
    add_quiet(p, "bar")


def cmd_predict(args: argparse.Namespace) -> int:
    """Extract each video the way the head's training store was extracted (with extract's decoder processes and
    batches) and give its top-k labels: printed, or written to a .csv/.jsonl file (-o) that a re-run resumes. A
    video that cannot be predicted (missing, not a video, broken) is a row with its cause, and the run goes on."""
    from ..encoders.base import check_device
    from ..probe.predict import predict_sources
    from ..probe.predictions import check_output
    from ..store.layout import check_writable

    _check_predict_order(args)
    if args.top_k < 1:
        raise ConfigError(f"-k/--top-k={args.top_k}: must be >= 1 (labels to show per video)")
    check_device(args.device, "--device")
    if args.output:
        check_output(args.output)
        check_writable(args.output, "write the predictions")
        if args.explain:
            raise ConfigError("--explain prints each frame's weight; it is not written to -o (drop one of them)")
    if args.explain and args.per_clip:
        raise ConfigError("--explain explains each video's prediction; --per-clip gives one per window (drop one)")
    plot_dir = None
    if args.explain:
        plot_dir = Path(args.explain_dir)
        check_writable(plot_dir, "write the --explain timelines", folder=True)
        try:
            plot_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--explain-dir {plot_dir}: cannot create it ({exc.strerror or exc})") from None
    options = pick(args, "top_k", "device", "trust", "decode_timeout", "explain", "per_clip", "root", "format")
    out = predict_sources(
        args.head,
        args.videos,
        output=args.output,
        plot_dir=plot_dir,
        progress=not args.quiet and not args.json,
        **options,
    )
    if args.output:
        _print_predict_run(args, out)
    elif args.json:
        print_json(out["rows"])
    else:
        _print_predictions(out["rows"])
    return EXIT_PARTIAL if out["failed"] else EXIT_OK


def _print_predict_run(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """With -o: this run's failures (stderr) and its counts."""
    counts = {k: out[k] for k in ("predicted", "failed", "skipped", "seconds")}
    if args.json:
        print_json({"output": args.output, **counts})
        return
    for r in out["rows"]:
        print(f"vidprobe predict: error: {r['error']}", file=sys.stderr)
    print(
        f"{out['predicted']} predicted, {out['failed']} failed, {out['skipped']} skipped (already in {args.output}) "
        f"in {out['seconds']:.1f} s -> {args.output}"
    )


def _print_predictions(rows: list[dict[str, Any]]) -> None:
    """One video: its top-k labels under its path (and --explain's weights); several: one line per row."""
    if not rows:
        print("vidprobe predict: nothing to predict: the sources hold no file", file=sys.stderr)
    for r in rows:
        if "error" in r:
            print(f"vidprobe predict: error: {r['error']}", file=sys.stderr)
        for message in r.get("warnings", []):
            print(f"vidprobe predict: warning: {message}", file=sys.stderr)
    done = [r for r in rows if "error" not in r]
    explained = any("clips" in r for r in done)  # --explain: each video with its frame weights, as below
    if not explained and (len(rows) > 1 or any("clip" in r for r in done)):
        width = max((len(r["path"]) for r in done), default=0)
        for r in done:
            window = f" {r['start']:.2f}-{r['end']:.2f}s" if "start" in r and "end" in r else ""
            tops = "  ".join(f"{t['label']} {t['prob']:.3f}" for t in r["top"])
            print(f"{r['path']:<{width}}{window}  {tops}")
        return
    for r in done:
        print(r["path"])
        for t in r["top"]:
            print(f"  {t['prob']:.3f}  {t['label']}")
        for c in r.get("clips", []):
            frames = " ".join(f"{f['time']:.2f}s:{f['weight']:.3f}" for f in c["frames"])
            split = ""
            if "logit" in c:  # an attn head: the weights explain its attention part of the winning logit
                split = f", logit {c['logit']['attention']:+.2f} attention {c['logit']['trend']:+.2f} trend"
            print(f"  frame weights ({r['explained_by']}, P={c['top_prob']:.3f}{split}): {frames}")
        if "plot" in r:
            print(f"  timeline -> {r['plot']}")
