"""The ``convscope`` command line: ``demo``, ``serve``, ``report``, ``runs``, ``compact``,
``diagnose``, ``analyze`` (``torchrun --nproc_per_node=N -m convscope analyze RUN ...``),
``live`` (a video file through a run's saved model)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__
from .errors import ConvscopeError


def _serve_kwargs(args: argparse.Namespace) -> dict:
    from .errors import ServeError

    given = [o for o, v in (("--token", args.token is not None), ("--no-token", args.no_token),
                            ("--token-file", args.token_file is not None)) if v]
    if len(given) > 1:
        raise ServeError(f"{' and '.join(given)} contradict each other: pass one of them.")
    if args.token is not None:
        print("WARNING: a --token on the command line is visible to every user of this machine "
              "(ps, /proc/PID/cmdline). Put it in $CONVSCOPE_TOKEN or in a file only you can "
              "read (--token-file PATH, chmod 600) instead.", file=sys.stderr, flush=True)
    token = False if args.no_token else args.token
    return dict(host=args.host, port=args.port, workers=args.workers, token=token,
                token_file=args.token_file, allow_hosts=args.allow_host or [],
                trust_checkpoints=args.trust_checkpoints, compute=args.compute)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .app import serve

    serve(args.logdir, **_serve_kwargs(args))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    out = write_report(args.run, args.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from .app.components import fmt_bytes
    from .store import list_runs

    infos = list_runs(args.logdir)
    if not infos:
        print(f"no runs in {Path(args.logdir).resolve()}")
        return 0
    for info in infos:
        contents = ", ".join(f"{t}={n}" for t, n in info.tables.items()) or "empty"
        print(f"{info.name}\t{info.created}\t{info.status}\t{fmt_bytes(info.size_bytes)}\t{contents}")
        for p in info.problems:
            print(f"  problem: {p}")
    return 0


def _cmd_compact(args: argparse.Namespace) -> int:
    from .formats.reader import open_run
    from .store import compact_run

    reader = open_run(args.run)  # validates the path
    for table, (before, after) in compact_run(reader.path).items():
        print(f"{table}: {before} -> {after} parts")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .formats import cka
    from .formats.compare import compare
    from .formats.reader import open_run

    ra, rb = open_run(args.run_a), open_run(args.run_b)  # validates the paths
    c = compare(ra, rb)
    print(f"A = {c.a}  ({ra.path})\nB = {c.b}  ({rb.path})")
    n = c.counts()
    print(f"\ndiagnosis findings: {n['new']} new in B, {n['gone']} gone from A, "
          f"{n['changed']} changed severity, {n['kept']} kept")
    mark = {"new": "+", "gone": "-", "changed": "~", "kept": "="}
    shown = c.findings if args.all else c.findings[c.findings["status"] != "kept"]
    for f in shown.itertuples(index=False):
        sev = f.severity_b if f.status == "new" else f.severity_a if f.status == "gone" \
            else f"{f.severity_a}->{f.severity_b}" if f.status == "changed" else f.severity_a
        print(f"  {mark[f.status]} [{f.report}] {f.code} @ {f.layer or '(model)'} ({sev}): "
              f"{f.message[:110]}")
    if not args.all and n["kept"]:
        print(f"  ({n['kept']} kept findings hidden: --all shows them)")
    print("\nattribution metrics (mean over each set's images; B - A):")
    if not len(c.metrics):
        print("  none in common (record attributions with the same key in both runs)")
    for m in c.metrics.itertuples(index=False):
        flag = "  *" if abs(m.delta) >= args.threshold else ""
        print(f"  [{m.set}] {m.method:<16} {m.metric:<13} {m.a:9.4f} -> {m.b:9.4f} "
              f"({m.delta:+.4f}){flag}")
    print("\npreferred inputs (mean objective reached):")
    if not len(c.preferred):
        print("  none recorded in either run")
    for p in c.preferred.itertuples(index=False):
        a = f"{p.value_a:.4g} ({p.units_a} units)" if p.in_a else "-"
        b = f"{p.value_b:.4g} ({p.units_b} units)" if p.in_b else "-"
        print(f"  {p.layer:<24} A {a:<24} B {b}")
    gen_line = c.generated_line()
    if gen_line:
        print(f"\n{gen_line}")
    for reader, keys in ((ra, c.cka_a), (rb, c.cka_b)):
        for key in keys:
            m = cka.load(reader, key)
            print(f"\nCKA {key!r} in {reader.name} ({m.label_a} x {m.label_b}, "
                  f"{m.n_images} images): best match per layer of {m.label_a}")
            for i, name in enumerate(m.layers_a):
                j = int(m.matrix[i].argmax())
                print(f"  {name:<24} -> {m.layers_b[j]:<24} {m.matrix[i, j]:.3f}")
    for note in c.notes:
        print(f"note: {note}")
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    if args.experiment == "dcgan":
        from .experiments.dcgan import run_experiment as dcgan

        paths = dcgan(args.logdir, data=args.data, name=args.name or "dcgan",
                      steps=args.gan_steps, batch_size=args.batch_size or 64,
                      image_size=args.image_size, sample_every=args.sample_every,
                      seed=args.seed, quiet=args.quiet)
        for path in paths:
            print(f"recorded {path}")
        return 0
    from .experiments.resnet50_cifar10 import run_experiment

    if not args.data:
        raise ConvscopeError("resnet50-cifar10 needs --data: the folder holding cifar-10-batches-py "
                             "(or -bin) from the CIFAR-10 archive; nothing is downloaded.")
    path = run_experiment(args.data, args.logdir, name=args.name, epochs=args.epochs,
                          batch_size=args.batch_size or 128, lr=args.lr,
                          limit_train=args.limit_train, limit_test=args.limit_test,
                          test_per_class=args.test_per_class, preferred_units=args.units,
                          preferred_steps=args.steps, method=args.method,
                          profile_images=args.profile_images,
                          profile_repeat=args.profile_repeat, seed=args.seed,
                          device=args.device, quiet=args.quiet)
    print(f"recorded {path}")
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .errors import InputError
    from .formats.diagnosis import sample_inputs
    from .run import Run
    from .store import open_run

    reader = open_run(args.run)
    model = reader.load_model(args.checkpoint, trust=args.trust_checkpoints)
    if args.inputs:
        inputs = torch.as_tensor(np.load(args.inputs)).float()
    else:
        stored = sample_inputs(reader)
        if stored is None:
            raise InputError(
                f"run {reader.name!r} stores no sample images: pass --inputs images.npy "
                "([N, C, H, W]), or record samples with run.log_feature_maps(model, images).")
        inputs = torch.as_tensor(stored)
    if args.record:
        with Run(reader.path.parent, reader.name, resume=True, quiet=True) as run:
            report = run.log_diagnosis(model, inputs)
    else:
        from .diagnose import diagnose

        report = diagnose(model, inputs, quiet=True)
    print(report.to_text())
    return 1 if args.strict and report.problems else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_path = run_demo(
        logdir=args.logdir, name=args.name, epochs=args.epochs, small=args.small,
        quiet=args.quiet, seed=args.seed,
    )
    if args.no_serve:
        print(f"demo run recorded in {run_path}; serve it with: convscope serve --logdir "
              f"{Path(args.logdir)}")
        return 0
    from .app import serve

    serve(args.logdir, **_serve_kwargs(args))
    return 0


def _cnnvis_clusters(text: str) -> int | None | dict[str, int | None]:
    """``--clusters``: ``auto`` (None: the silhouette chooses), a count, or ``LAYER=N`` pairs
    (comma-separated; ``N`` a count or ``auto``) for ``run.log_cnnvis(clusters=...)``."""
    from .errors import InputError

    def count(word: str) -> int | None:
        word = word.strip().lower()
        if word == "auto":
            return None
        if word.isdigit() and int(word) >= 1:
            return int(word)
        raise InputError(f"--clusters takes 'auto', a count >= 1 or LAYER=N pairs, e.g. "
                         f"--clusters 6 or --clusters layer1.0.conv1=4,layer2.0.conv1=auto; "
                         f"got {text!r}.")

    if "=" not in text:
        return count(text)
    out: dict[str, int | None] = {}
    for item in (x for x in text.split(",") if x.strip()):
        layer, sep, n = item.partition("=")
        if not sep or not layer.strip():
            count("")  # the message
        out[layer.strip()] = count(n)
    return out


def _cmd_analyze(args: argparse.Namespace) -> int:
    """Every rank opens the run and calls the same ``run.log_*`` as the Python API with
    ``sharded=True``: the work is split across the ranks and rank 0 stores the results."""
    import os

    import numpy as np
    import torch

    from .errors import InputError
    from .nn.dist import rank_world
    from .run import Run
    from .store import open_run

    what = [w.strip() for w in args.what.split(",") if w.strip()]
    known = ("top-examples", "preferred-inputs", "attributions", "diagnosis", "projections",
             "cnnvis")
    bad = [w for w in what if w not in known]
    if bad or not what:
        raise InputError(f"--what takes a comma-separated list of {', '.join(known)}; got "
                         f"{args.what!r}.")
    layers = [x.strip() for x in (args.layers or "").split(",") if x.strip()]
    if not layers and {"top-examples", "preferred-inputs", "projections"} & set(what):
        raise InputError("--layers needs at least one layer (module path), e.g. layer1,layer2, "
                         "for top-examples, preferred-inputs and projections.")
    from .record.features import preferred_method

    preferred_method(args.method)  # a bad name fails before the model is loaded
    clusters = _cnnvis_clusters(args.clusters)  # CNNVis: so does a bad --clusters
    started = False
    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
        started = True
    try:
        rank, world = rank_world()
        reader = open_run(args.run)
        model = reader.load_model(args.checkpoint, trust=args.trust_checkpoints)
        data = labels = masks = class_names = None
        if {"top-examples", "attributions", "diagnosis", "projections", "cnnvis"} & set(what):
            if args.dataset_npy:
                data = torch.as_tensor(np.load(args.dataset_npy)).float()
            else:
                from .data import Shapes

                shapes = Shapes(n=args.images, split="test")
                data, labels, masks = shapes.tensors()
                class_names = list(shapes.class_names)
        key = args.key or "dataset"
        run = Run(reader.path.parent, reader.name, resume=True, rank=rank,
                  quiet=args.quiet or rank != 0)
        try:
            if "top-examples" in what:
                run.log_top_examples(model, layers, data, args.k, batch_size=args.batch_size,
                                     sharded=True)
            if "preferred-inputs" in what:
                run.log_preferred_inputs(model, layers, max_units=args.units, seed=args.seed,
                                         steps=args.steps, method=args.method, sharded=True)
            if "projections" in what and rank == 0:  # DeconvNet: one process (not sharded)
                run.log_projections(model, layers, data, max_units=args.units or 16, k=args.k,
                                    batch_size=args.batch_size)
            if "cnnvis" in what and rank == 0:  # CNNVis (Liu et al. 2017): one process
                from torch.utils.data import TensorDataset

                labelled = data if labels is None else TensorDataset(data, labels)
                run.log_cnnvis(model, labelled, layers or None, clusters=clusters,
                               by=args.cnnvis_by, influence=args.influence,
                               influence_images=args.influence_images,
                               batch_size=args.batch_size, seed=args.seed, key=args.key)
            if "attributions" in what:
                n = min(len(data), args.attribution_images)
                run.log_attributions(model, data[:n],
                                     labels=None if labels is None else labels[:n],
                                     masks=None if masks is None else masks[:n],
                                     layer=args.cam_layer, key=key, class_names=class_names,
                                     batch_size=args.batch_size, sharded=True)
            if "diagnosis" in what:
                run.log_diagnosis(model, data, key=key, views=True, batch_size=args.batch_size,
                                  seed=args.seed, sharded=True)
        finally:  # rank 0 compacts and marks the run ended again; the other ranks wrote nothing
            run.close(compact=rank == 0)
        if rank == 0:
            done = ", ".join(what) + (f" of {', '.join(layers)}" if layers else "")
            print(f"stored {done} in {reader.path} "
                  f"({world} process{'es' if world > 1 else ''})")
        if world > 1:
            dist.barrier()
    finally:
        if started:
            dist.destroy_process_group()
    return 0


# -- convscope live (issue 16: a video through the saved model, as the Live page plays it) ----
def _live_shape(reader, key: str, size: str | None) -> tuple[int, int, int]:
    """The model input ``(C, H, W)`` the frames are cut to: ``--size HxW`` (channels from the
    run), else as the Live page finds it: the stored samples, the graph's input, the shape
    saved with the checkpoint, else 3 x 32 x 32."""
    from .errors import InputError
    from .formats import checkpoints as ck_format

    shape = ck_format.model_input_shape(reader, key) or [3, 32, 32]
    try:
        c, h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise InputError(f"the run's recorded model input {shape!r} is not [C, H, W]: pass "
                         "--size HxW (e.g. --size 224x224).") from None
    if size is not None:
        hs, sep, ws = size.lower().partition("x")
        if not (sep and hs.isdigit() and ws.isdigit() and 1 <= int(hs) <= 8192
                and 1 <= int(ws) <= 8192):
            raise InputError(f"--size takes HxW in pixels, e.g. --size 224x224; got {size!r}.")
        h, w = int(hs), int(ws)
    if c not in (1, 3):
        raise InputError(f"convscope live plays video into models taking 1 or 3 channels; this "
                         f"one takes {c}. Use cs.features.play in Python with your own frames.")
    return c, h, w


def _cmd_live(args: argparse.Namespace) -> int:
    """Decode VIDEO, play it through the run's saved model in batches and write one PNG of the
    layer's channel grid (or fc bars) per frame and the top classes of every frame."""
    import csv

    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    from .data import read_video
    from .errors import InputError
    from .features import play
    from .figures.live import bars_image, grid_image
    from .formats import checkpoints as ck_format
    from .nn import layer_path
    from .store import open_run

    for opt, v, least in (("--top", args.top, 0), ("--batch-size", args.batch_size, 1),
                          ("--scale", args.scale, 0)):
        most = 64 if opt == "--scale" else 1 << 30
        if not least <= v <= most:
            raise InputError(f"{opt} must be from {least} to {most}, got {v}.")
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError(f"--max-frames must be at least 1, got {args.max_frames}.")
    if not Path(args.logdir).is_dir():
        raise InputError(f"no logdir at {args.logdir!r}: pass --logdir DIR (the directory of "
                         "runs).")
    run_dir = Path(args.logdir) / args.run
    if not (run_dir / "run.json").is_file():
        raise InputError(f"no run named {args.run!r} in {args.logdir!r}: see convscope runs "
                         f"--logdir {args.logdir}.")
    reader = open_run(run_dir)
    key = args.checkpoint or ck_format.default_key(reader)
    model = reader.load_model(key, trust=args.trust_checkpoints)
    layer = layer_path(model, args.layer)  # a bad layer fails before decoding
    c, h, w = _live_shape(reader, key, args.size)
    names = reader.config.get("class_names") if isinstance(reader.config, dict) else None
    names = [str(n) for n in names] if isinstance(names, list) and names else None
    video = read_video(args.video, size=(h, w), fps=args.fps, max_frames=args.max_frames,
                       channels=c, quiet=args.quiet)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create --out {args.out!r} ({exc.strerror}): pass a "
                         "directory you can write.") from None
    frames, times = video.frames, video.times
    n, chunk, note = len(frames), max(args.batch_size, 256), ""
    bar = tqdm(total=n, disable=args.quiet, desc=f"live {layer}", unit="frame")
    with open(out / "top5.csv", "w", newline="") as fh:
        table = csv.writer(fh)
        table.writerow(["frame", "time_s", "rank", "class", "name", "p"])
        for i in range(0, n, chunk):  # bounded memory: maps of one chunk at a time
            got = play(model, layer, frames[i:i + chunk], top=args.top, classes=names,
                       batch=args.batch_size, quiet=True)
            note = got.note or note
            for t in range(len(got)):
                maps = got.maps[t].numpy()
                img = bars_image(maps.reshape(-1)) if got.flat else grid_image(maps)[0]
                k = args.scale or max(1, 256 // max(img.shape[:2]))
                if k > 1:  # nearest neighbour: every value stays one flat block
                    img = np.repeat(np.repeat(img, k, axis=0), k, axis=1)
                Image.fromarray(np.ascontiguousarray(img)).save(
                    out / f"frame_{i + t:05d}.png", compress_level=1)
                for rank, (cls, name, p) in enumerate(got.top(t), start=1):
                    table.writerow([i + t, f"{float(times[i + t]):.6f}", rank, cls, name,
                                    repr(p)])
            bar.update(len(got))
    bar.close()
    kind = "bars" if got.flat else "channel grids"
    print(f"wrote {n} frames ({kind} of {layer}, {video.fps:.3g} frames/s of "
          f"{video.container.upper()} {video.codec} {video.size[0]} x {video.size[1]}, cut to "
          f"{w} x {h}) as {out}/frame_*.png and the top {args.top} classes as {out}/top5.csv"
          + "".join(f"; {x}" for x in (video.note, note) if x))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convscope",
        description="A microscope for convolutional networks: record runs, serve them in the "
        "browser.",
    )
    p.add_argument("--version", action="version", version=f"convscope {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def serve_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1, this machine only)")
        sp.add_argument("--port", type=int, default=8050, help="port (default 8050)")
        sp.add_argument("--token", default=None, help="access token to require (default: "
                        "$CONVSCOPE_TOKEN, else one generated and printed when --host is not "
                        "a loopback address; none on loopback). Other users of the machine "
                        "can read a command line: prefer $CONVSCOPE_TOKEN or --token-file")
        sp.add_argument("--token-file", default=None, metavar="PATH", help="read the access "
                        "token from the first line of PATH (a file only you can read: chmod "
                        "600)")
        sp.add_argument("--no-token", action="store_true", help="require no token even off "
                        "loopback (anyone who reaches the port can use the dashboard)")
        sp.add_argument("--allow-host", action="append", metavar="NAME", help="accept "
                        "requests whose Host header is NAME (repeatable; '*' for any). On "
                        "loopback only loopback names are accepted otherwise (DNS rebinding)")
        sp.add_argument("--workers", type=int, default=None, help="worker processes (default: "
                        "the usable cores, at most 8; 1 serves in one process)")
        trust_opt(sp)
        sp.add_argument("--compute", action=argparse.BooleanOptionalAction, default=None,
                        help="let the Model page compute a layer's preferred inputs and top "
                        "examples on demand with the run's saved model and store them in the "
                        "run (default: on for a loopback --host, off otherwise)")

    def trust_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--trust-checkpoints", action="store_true", help="allow unpickling "
                        "whole-module checkpoints (checkpoints/*.pt); unpickling runs code, so "
                        "only for runs you trust")

    d = sub.add_parser("demo", help="train a small CNN on procedural shapes, record "
                       "everything, serve the dashboard")
    d.add_argument("--logdir", default="runs", help="where runs are written (default: runs)")
    d.add_argument("--name", default=None, help="run name (default: timestamp + suffix)")
    d.add_argument("--epochs", type=int, default=None, help="training epochs (default: the "
                   "demo's tuned setting)")
    d.add_argument("--small", action="store_true", help="tiny data and model (seconds; for "
                   "tests)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-serve", action="store_true", help="record only, do not serve")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    serve_opts(d)
    d.set_defaults(func=_cmd_demo)

    s = sub.add_parser("serve", help="serve a logdir (a directory of runs) in the browser")
    s.add_argument("--logdir", default="runs", help="directory of runs (default: runs)")
    serve_opts(s)
    s.set_defaults(func=_cmd_serve)

    r = sub.add_parser("report", help="write one self-contained HTML report of a run")
    r.add_argument("run", help="run directory")
    r.add_argument("--out", default="report.html", help="output file (default report.html)")
    r.set_defaults(func=_cmd_report)

    dg = sub.add_parser("diagnose", help="diagnose a run's saved model (dead maps, low "
                        "diversity, ...) and say what to try")
    dg.add_argument("run", help="run directory (with a checkpoint from run.log_checkpoint)")
    dg.add_argument("--checkpoint", default="model", help="checkpoint key (default: model)")
    dg.add_argument("--inputs", default=None, help=".npy file of images [N, C, H, W] "
                    "(default: the run's stored sample images)")
    dg.add_argument("--record", action="store_true", help="also store the report in the run "
                    "(Diagnosis page)")
    dg.add_argument("--strict", action="store_true", help="exit 1 when there are warnings or "
                    "errors (for CI)")
    trust_opt(dg)
    dg.set_defaults(func=_cmd_diagnose)

    ls = sub.add_parser("runs", help="list the runs in a logdir")
    ls.add_argument("--logdir", default="runs")
    ls.set_defaults(func=_cmd_runs)

    cp = sub.add_parser("compare", help="what changed between two runs: diagnosis findings, "
                        "attribution metrics, preferred inputs and CKA (as the Compare page)")
    cp.add_argument("run_a", help="the reference run directory (A)")
    cp.add_argument("run_b", help="the run directory compared with it (B)")
    cp.add_argument("--all", action="store_true", help="also list the findings both runs share")
    cp.add_argument("--threshold", type=float, default=0.05, help="mark metric changes at least "
                    "this large with * (default 0.05)")
    cp.set_defaults(func=_cmd_compare)

    ex = sub.add_parser("experiment", help="run a source document's experiment end to end: "
                        "resnet50-cifar10 (Li et al.: ResNet-50 on CIFAR-10, local files) or "
                        "dcgan (Wang & Li 2020: three DCGAN rounds, each its own run)")
    ex.add_argument("experiment", choices=["resnet50-cifar10", "dcgan"], help="the experiment")
    ex.add_argument("--data", default=None, help="resnet50-cifar10: the folder holding "
                    "cifar-10-batches-py (or -bin) (required); dcgan: a folder holding CelebA's "
                    "img_align_celeba/ (default: procedural faces). Nothing is downloaded")
    ex.add_argument("--logdir", default="runs", help="where the run is written (default runs)")
    ex.add_argument("--name", default=None, help="run name (default: a timestamp; dcgan: the "
                    "runs' prefix, default dcgan)")
    ex.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    ex.add_argument("--batch-size", type=int, default=None, help="default 128 (dcgan: 64)")
    ex.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate (0.1)")
    ex.add_argument("--limit-train", type=int, default=None, help="use the first N training "
                    "images only (quick runs)")
    ex.add_argument("--limit-test", type=int, default=None, help="use the first N test images")
    ex.add_argument("--test-per-class", type=int, default=1000, help="the paper's split: test "
                    "images drawn per class (default 1000)")
    ex.add_argument("--units", type=int, default=16, help="preferred inputs per conv layer of "
                    "stages 1 and 4 (default 16)")
    ex.add_argument("--steps", type=int, default=128, help="activation maximisation steps "
                    "(default 128)")
    ex.add_argument("--method", default="yosinski:3", help="activation maximisation: "
                    "yosinski:N (Yosinski et al. 2015 preset N) or lucid (default yosinski:3)")
    ex.add_argument("--profile-images", type=int, default=32, help="batch that times each "
                    "layer for the Resources page (default 32)")
    ex.add_argument("--profile-repeat", type=int, default=3, help="timing repeats (default 3)")
    ex.add_argument("--device", default=None, help="train on this device, e.g. cuda (default: "
                    "the CPU); the recordings run on the CPU")
    ex.add_argument("--gan-steps", type=int, default=15000, help="dcgan: training steps per "
                    "round (default 15000, the paper's)")
    ex.add_argument("--image-size", type=int, default=160, help="dcgan: image side (160)")
    ex.add_argument("--sample-every", type=int, default=500, help="dcgan: store a grid of "
                    "generated images every N steps (500)")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--quiet", action="store_true")
    ex.set_defaults(func=_cmd_experiment)

    c = sub.add_parser("compact", help="merge a run's small Parquet parts")
    c.add_argument("run", help="run directory")
    c.set_defaults(func=_cmd_compact)

    an = sub.add_parser("analyze", help="top examples, preferred inputs, attribution maps, "
                        "diagnosis, DeconvNet projections and CNNVis clusters of a run's saved "
                        "model over a data set, sharded across processes under torchrun")
    an.add_argument("run", help="run directory (with a checkpoint from run.log_checkpoint)")
    an.add_argument("--what", default="top-examples,preferred-inputs",
                    help="comma-separated: top-examples, preferred-inputs, attributions, "
                    "diagnosis, projections (DeconvNet, Zeiler & Fergus 2014; rank 0 only), "
                    "cnnvis (CNNVis, Liu et al. 2017: channel clusters of a chain of layers "
                    "and their bundled edges; rank 0 only) (default: the first two)")
    an.add_argument("--layers", default="", help="comma-separated layer module paths (for "
                    "top-examples, preferred-inputs and projections; for cnnvis the chain in "
                    "drawing order, default: the first 5 convolutions after the stem)")
    an.add_argument("--k", type=int, default=9, help="top examples per channel (default 9)")
    an.add_argument("--units", type=int, default=None, help="preferred inputs (and projections) "
                    "of the first N channels of each layer (default 16, fewer preferred inputs "
                    "where a step is too slow for the budget)")
    an.add_argument("--images", type=int, default=2000, help="Shapes test images to rank, "
                    "explain and diagnose (default 2000)")
    an.add_argument("--dataset-npy", default=None, help=".npy file of images [N, C, H, W] to "
                    "rank instead of Shapes")
    an.add_argument("--attribution-images", type=int, default=256, help="explain the first N "
                    "images with every attribution method (default 256)")
    an.add_argument("--cam-layer", default=None, help="Grad-CAM / Score-CAM layer (default: "
                    "the last feature map)")
    an.add_argument("--key", default=None, help="name of the stored attribution set and "
                    "diagnosis report (default: dataset) and of the CNNVis view (default: "
                    "cnnvis)")
    an.add_argument("--clusters", default="auto", help="cnnvis: channel clusters per layer: "
                    "auto (default: 2 to 12, chosen by the silhouette), a count, or LAYER=N "
                    "pairs, comma-separated (the page can change the count later)")
    an.add_argument("--cnnvis-by", default="auto", choices=("auto", "class", "image"),
                    help="cnnvis: describe a channel by its mean response per class (CNNVis; "
                    "needs labels: the Shapes images have them, --dataset-npy has none) or per "
                    "image (default auto: class when there are labels)")
    an.add_argument("--influence", default="auto", choices=("auto", "weights", "gradient"),
                    help="cnnvis: how the influence between adjacent layers is measured "
                    "(default auto: the weights where the next layer is a convolution reading "
                    "the layer directly, else the gradient)")
    an.add_argument("--influence-images", type=int, default=4, help="cnnvis: images for the "
                    "gradient influence (default 4)")
    an.add_argument("--batch-size", type=int, default=64)
    an.add_argument("--steps", type=int, default=None, help="maximisation steps (default: "
                    "maximize's)")
    an.add_argument("--method", default="lucid", help="preferred inputs: lucid (default: the "
                    "lucid-style parameterisation and transforms) or yosinski:N, N = 1-4 "
                    "(Yosinski et al. 2015: plain gradient ascent with the paper's regulariser "
                    "setting N: L2 decay, blur, small-norm and small-contribution clipping)")
    an.add_argument("--seed", type=int, default=0)
    an.add_argument("--checkpoint", default="model", help="checkpoint key (default: model)")
    an.add_argument("--quiet", action="store_true", help="no progress bars")
    trust_opt(an)
    an.set_defaults(func=_cmd_analyze)

    lv = sub.add_parser("live", help="play a video file through a run's saved model (as the Live "
                        "page does): one PNG of a layer's channel grid per frame and the top "
                        "classes of every frame in a CSV",
                        description="Play VIDEO (MP4: H.264, HEVC, AV1, MPEG-4; WebM: VP8, VP9, "
                        "AV1; decoded with PyAV: pip install 'convscope[video]') through the "
                        "saved model of run RUN in DIR (run.log_checkpoint), Yosinski et al. "
                        "2015's live view offline. Each frame is scaled so its short side fits "
                        "the model's input and centre-cropped. Writes OUT/frame_00000.png, ... "
                        "(the layer's channels as the Live page draws them: each channel scaled "
                        "on its own, Viridis, all channels; an fc layer as bars) and OUT/top5.csv "
                        "(frame, time_s, rank, class, name, p: the softmax of the model's output, "
                        "names from the run's class_names). Exit status 2 with a message on a "
                        "bad file, run or layer. Python: cs.data.read_video + cs.features.play.")
    lv.add_argument("video", help="the MP4 or WebM file")
    lv.add_argument("--logdir", default="runs", help="directory of runs (default: runs)")
    lv.add_argument("--run", required=True, help="the run's name in --logdir")
    lv.add_argument("--layer", required=True, help="layer module path (e.g. layer1.0.conv1, "
                    "or fc for the classifier's outputs)")
    lv.add_argument("--out", required=True, help="folder for the PNGs and top5.csv (created)")
    lv.add_argument("--fps", type=float, default=None, help="frames taken per second of video "
                    "(default: the video's rate, at most 30)")
    lv.add_argument("--max-frames", type=int, default=None, help="at most N frames (default "
                    "10000); when N at --fps would not cover the video, they are spread over "
                    "it (the rate is lowered; the summary says which)")
    lv.add_argument("--top", type=int, default=5, help="classes per frame in the CSV (default 5)")
    lv.add_argument("--size", default=None, help="frame size HxW (default: the model input the "
                    "run recorded, else 32x32)")
    lv.add_argument("--scale", type=int, default=0, help="enlarge each PNG N times, every value "
                    "a flat block (default 0: the largest N that keeps the longer side within "
                    "256 pixels, at least 1; 1: the grid's own size)")
    lv.add_argument("--batch-size", type=int, default=32, help="frames per forward pass "
                    "(default 32)")
    lv.add_argument("--checkpoint", default=None, help="checkpoint key (default: the run's "
                    "default, as the Live page)")
    lv.add_argument("--quiet", action="store_true", help="no progress bars")
    trust_opt(lv)
    lv.set_defaults(func=_cmd_live)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ConvscopeError as exc:
        print(f"convscope: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # python -m convscope.cli
    sys.exit(main())
