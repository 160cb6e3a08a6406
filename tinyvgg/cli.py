"""The command line: ``python -m tinyvgg COMMAND ...``.

Commands
--------
train      train a VGG (progress bar, history, curves, checkpoints, --resume)
evaluate   top-1/top-5 accuracy of a checkpoint on a dataset (--json, --plots)
predict    the top-5 classes of one image
summary    the layer table of a VGG configuration
gradcheck  a float64 gradient check of a whole (narrow) VGG
convert    torchvision .pth <-> tinyvgg .npz checkpoints
demo       what ``make demo`` runs: a narrow VGG-11 on Fashion-MNIST
doctor     a short training run that says why a configuration is not learning
mpi-info   which MPI this process gets (for train --data-parallel), and whether it is CUDA-aware

Every command's argument handling lives here; the library functions it calls take
plain values (no argparse.Namespace).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import numpy as np

__all__ = ["main", "build_parser"]


def _scale(text):
    """``256`` -> 256; ``256,512`` -> (256, 512)."""
    parts = [int(p) for p in text.replace(":", ",").split(",") if p.strip()]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return tuple(parts)
    raise argparse.ArgumentTypeError(f"expected S or S_MIN,S_MAX, got {text!r}")


# Options a recipe sets (--recipe): left out of the namespace when not given, so that
# TrainConfig.from_recipe fills them from the recipe and an explicit option wins.
_FROM_RECIPE = dict(default=argparse.SUPPRESS)


def _floats(text):
    """``0.5,0.5,0.5`` -> [0.5, 0.5, 0.5] (an argparse type)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.5,0.5,0.5, "
                                         f"got {text!r}")
    return values


def _add_convert_args(p):
    """The arguments of ``convert``."""
    p.add_argument("src", help=".pth/.pt (torchvision-layout state dict) or .npz (tinyvgg checkpoint)")
    p.add_argument("dst", help="output file")
    p.add_argument("--name", default=None, help="expected architecture, e.g. vgg16_bn (checked)")
    p.add_argument("--mean", type=_floats, default=None,
                   help="per-channel mean the network was trained with, in torchvision's [0, 1] units "
                        "(transforms.Normalize), e.g. 0.5,0.5,0.5 (default ImageNet's 0.485,0.456,0.406)")
    p.add_argument("--std", type=_floats, default=None,
                   help="per-channel std, [0, 1] units (default ImageNet's 0.229,0.224,0.225; "
                        "--mean 0 --std 1 for a network fed ToTensor() alone)")
    p.add_argument("--resize", type=int, default=None,
                   help="shorter side before the centre crop (default 256 for input size 224)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="the .pth holds Python objects beyond tensors (a whole nn.Module, an "
                        "argparse.Namespace) and you trust it: load it with full unpickling, "
                        "which can run code")


def _add_model_args(p, defaults):
    p.add_argument("--model", default=defaults.model,
                   help="vgg11 (A), vgg11_lrn (A-LRN), vgg13 (B), vgg16_1x1 (C), vgg16 (D), vgg19 (E)")
    p.add_argument("--width", type=float, default=defaults.width, help="channel multiplier (1.0 = the paper)")
    p.add_argument("--hidden", type=int, default=defaults.hidden, help="width of the hidden FC layers "
                   "(default 4096 x width)")
    p.add_argument("--batch-norm", dest="batch_norm", action="store_true", default=None,
                   help="BatchNorm after every convolution (a _bn model name, vgg11_bn, too; "
                        f"default {'on' if defaults.batch_norm else 'off'})")
    p.add_argument("--no-batch-norm", dest="batch_norm", action="store_false")
    p.add_argument("--dropout", type=float, **_FROM_RECIPE,
                   help=f"dropout of the hidden FC layers (default recipe {defaults.dropout}, paper 0.5)")
    p.add_argument("--init", default=defaults.init, choices=["paper", "glorot", "he"])


def _add_recipe_args(p, defaults):
    from .optim import SCHEDULES
    from .train import PAPER_RECIPE, RECIPES

    paper = PAPER_RECIPE
    p.add_argument("--recipe", default="default", choices=list(RECIPES),
                   help="default: one cycle to --lr over --epochs, Nesterov momentum, batch "
                        f"{defaults.batch_size}, no label smoothing, no dropout, weight "
                        "decay on weights only, flip test-time augmentation (measured: experiments/results/recipe_ablation.md); paper: the "
                        f"paper's section 3.1 (batch {paper['batch_size']}, lr {paper['lr']}, momentum "
                        f"{paper['momentum']}, weight decay {paper['weight_decay']}, dropout {paper['dropout']}, "
                        "lr divided by 10 on a validation plateau). Options given explicitly override it")
    p.add_argument("--batch-size", type=int, **_FROM_RECIPE, help=f"default {defaults.batch_size}")
    p.add_argument("--lr", type=float, **_FROM_RECIPE,
                   help="(peak) learning rate; default 0.1 with --batch-norm, 0.01 without")
    p.add_argument("--momentum", type=float, **_FROM_RECIPE, help=f"default {defaults.momentum}")
    p.add_argument("--weight-decay", type=float, **_FROM_RECIPE, help=f"default {defaults.weight_decay}")
    p.add_argument("--decay-bias-and-norm", dest="decay_bias_and_norm", action="store_true", **_FROM_RECIPE,
                   help="apply weight decay to biases and BatchNorm parameters too (the paper's recipe does)")
    p.add_argument("--nesterov", dest="nesterov", action="store_true", **_FROM_RECIPE,
                   help="Nesterov momentum (on in the default recipe)")
    p.add_argument("--no-nesterov", dest="nesterov", action="store_false", **_FROM_RECIPE)
    p.add_argument("--schedule", choices=list(SCHEDULES), **_FROM_RECIPE,
                   help=f"default {defaults.schedule}: warm-up over --pct-start of the steps, then cosine to "
                        "near zero at the last epoch; plateau = the paper's: divide by 10 when validation "
                        "accuracy stops improving")
    p.add_argument("--pct-start", type=float, **_FROM_RECIPE,
                   help=f"onecycle: the fraction of the steps spent warming up (default {defaults.pct_start})")
    p.add_argument("--patience", type=int, default=defaults.patience)
    p.add_argument("--warmup-epochs", type=float, **_FROM_RECIPE,
                   help="linear warm-up for the other schedules (epochs)")
    p.add_argument("--label-smoothing", type=float, **_FROM_RECIPE,
                   help="train against (1 - e) one-hot + e / K (default 0: it did not help measurably, "
                        "experiments/results/recipe_ablation.md)")
    p.add_argument("--tta-flip", dest="tta_flip", action="store_true", **_FROM_RECIPE,
                   help="validation and test accuracy average the posteriors of each image and its mirror "
                        "(default recipe: on; paper: off)")
    p.add_argument("--no-tta-flip", dest="tta_flip", action="store_false", **_FROM_RECIPE)


def _add_train_args(p, defaults):
    _add_model_args(p, defaults)
    _add_recipe_args(p, defaults)
    p.add_argument("--dataset", default=defaults.dataset, choices=["fashion-mnist", "cifar10", "folder"])
    p.add_argument("--data-dir", default=None, help="where the data is (else $TINYVGG_DATA, ~/.cache/tinyvgg, "
                   "/usr/share/datasets; downloaded when missing)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--input-size", type=int, default=None,
                   help="network input side (multiple of 32; default: the images' side rounded "
                        "up to one); images are rescaled to it, except Fashion-MNIST's 28 -> 32, "
                        "padded")
    p.add_argument("--val-size", type=float, default=defaults.val_size,
                   help="validation hold-out: a fraction (<1) or a number of images")
    p.add_argument("--no-flip", dest="flip", action="store_false", default=True)
    p.add_argument("--crop-padding", type=int, default=defaults.crop_padding)
    p.add_argument("--scale", type=_scale, default=None,
                   help="training scale S, or S_MIN,S_MAX for scale jittering (paper section 3.1)")
    p.add_argument("--pca", action="store_true", help="AlexNet-style colour shift")
    p.add_argument("--limit", type=int, default=None,
                   help="use only LIMIT images (a seeded sample that keeps the class proportions; "
                        "at most the number of training images)")
    p.add_argument("--eval-batch-size", type=int, default=defaults.eval_batch_size)
    p.add_argument("--seed", type=int, default=defaults.seed,
                   help="seed of the initialisation, batch order, augmentation and dropout "
                        "(and of the validation hold-out unless --split-seed is given)")
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the validation hold-out and the --limit sample (default: "
                        "--seed); runs with different --seed and one --split-seed share "
                        "their validation images")
    p.add_argument("--device", default=defaults.device, choices=["cpu", "gpu"])
    p.add_argument("--out", default=defaults.out, help="run folder")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=True)
    p.add_argument("--log-every", type=int, default=defaults.log_every)
    p.add_argument("--dtype", default=defaults.dtype, choices=["float32", "float64"])
    p.add_argument("--replicas", type=int, default=None,
                   help="copies of the model on this machine's cores, each stepping a share of every "
                        "batch in a process of its own (the step is the whole batch's: BatchNorm is "
                        "synchronised); default: one per core on the CPU when each gets at least 32 "
                        "images of the batch (64 off x86 processors) and a step is large enough; 1: none")


def _add_evaluate_args(p):
    """The arguments of ``evaluate``."""
    p.add_argument("checkpoints", nargs="+", help="one checkpoint, or several for an ensemble")
    p.add_argument("--dataset", default=None, choices=["fashion-mnist", "cifar10", "folder"],
                   help="default: the dataset the checkpoint was trained on")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default=None, choices=["test", "val", "train", "all"],
                   help="which images: test = the test split (default; a class folder without "
                   "train/test sub-folders is evaluated whole, except the folder the model was "
                   "trained on, whose held-out validation images are used); val = the validation "
                   "images the training run held out; train or all = every training image")
    p.add_argument("--protocol", default="single",
                   choices=["single", "multi-scale", "dense", "multi-crop", "dense+multi-crop"])
    p.add_argument("--scales", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="test scales Q, comma-separated (default: the protocol's rule)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate a seeded sample of LIMIT images that keeps the class proportions")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--plots", default=None, help="write the confusion matrix PNG into this folder")


def build_parser():
    from .train import TrainConfig

    d = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m tinyvgg", description="tinyvgg: VGG from scratch")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a VGG")
    _add_train_args(p, d)
    p.add_argument("--resume", default=None, help="a run folder (or checkpoint) to continue")
    p.add_argument("--init-from", default=None,
                   help="fine-tune: start a new run from this checkpoint's weights (a trained run's "
                        "or converted torchvision weights), with its architecture and input "
                        "normalisation; the last layer is replaced when the class count differs")
    p.add_argument("--doctor", action="store_true", help="per-layer statistics and diagnoses while training")
    p.add_argument("--doctor-every", type=int, default=d.doctor_every)
    p.add_argument("--data-parallel", action="store_true",
                   help="data-parallel training over MPI ranks (launch with mpirun -n P)")

    _add_evaluate_args(sub.add_parser("evaluate", help="accuracy of checkpoints on a dataset"))

    p = sub.add_parser("predict", help="top-5 classes of an image")
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--top", type=int, default=5)

    p = sub.add_parser("summary", help="the layer table of a VGG")
    p.add_argument("model")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--batch-norm", action="store_true")

    p = sub.add_parser("gradcheck", help="float64 gradient check of a whole VGG")
    p.add_argument("model")
    p.add_argument("--width", type=float, default=0.0625)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch-norm", action="store_true")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--coords", type=int, default=16, help="coordinates checked per array")
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("convert", help="torchvision .pth <-> tinyvgg .npz")
    _add_convert_args(p)

    p = sub.add_parser("demo", help="train a narrow VGG-11 on Fashion-MNIST (what make demo runs)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--data-dir", default=None)

    p = sub.add_parser("doctor", help="a short run that diagnoses why training is not working")
    _add_train_args(p, d)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: about a minute)")
    p.add_argument("--every", type=int, default=None, help="record statistics every N steps")

    sub.add_parser("mpi-info", help="which MPI this process gets (mpi4py, library, world size, "
                                    "CUDA-aware or not); run it under mpirun to see the launched world")
    return parser


def _config_from_args(args):
    """The TrainConfig of a ``train``/``doctor`` command line: ``--recipe``'s settings,
    then every option the command line gave or defaults outside the recipe."""
    from .train import TrainConfig

    kw = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and k != "recipe"}
    if kw.get("batch_norm") is None:  # neither --batch-norm nor --no-batch-norm: the default
        kw.pop("batch_norm", None)
    elif not kw["batch_norm"] and _names_batch_norm(kw.get("model")):
        raise ValueError(f"--model {kw['model']} has BatchNorm and --no-batch-norm asks for none: "
                         f"give --model {kw['model'].strip()[:-3]} for a network without it")
    return TrainConfig.from_recipe(getattr(args, "recipe", "default"), **kw)


def _names_batch_norm(model):
    """Whether the model name alone asks for BatchNorm (a "_bn" suffix: vgg11_bn)."""
    from .models import resolve_name
    try:
        return resolve_name(model)[1]
    except ValueError:  # an unknown name: reported with the valid ones when the model is built
        return False


def _setting_hooks(cfg):
    """The trainer hooks a run's settings ask for: the doctor of ``--doctor``. Called
    with the settings the run trains with, so a resumed run (whose saved settings
    say ``doctor``) and every rank of a data-parallel run keep it."""
    if not cfg.doctor:
        return []
    from .doctor import Doctor
    return [Doctor(every=cfg.doctor_every)]


def cmd_train(args):
    from .train import train

    cfg = _config_from_args(args)
    if args.data_parallel:
        from .distributed import train_data_parallel
        return train_data_parallel(cfg, resume=args.resume, hooks_for=_setting_hooks)
    train(cfg, resume=args.resume, hooks_for=_setting_hooks)
    return 0


def _seeded_subset(ds, limit, seed=0):
    """``ds``, or a stratified seeded sample of ``limit`` of its images, and a phrase
    saying which (for the report)."""
    if limit is None or limit >= len(ds):
        return ds, ""
    if limit < 1:
        raise ValueError(f"--limit must be a positive number of images, got {limit}")
    from .data import stratified_sample
    keep = stratified_sample(ds.labels, int(limit), seed)
    return ds.subset(keep), (f"; --limit {limit}: a seeded sample of {len(keep)} of its "
                             f"{len(ds)} images, class proportions kept")


def _print_result(res, dataset_desc, out=None):
    out = out or sys.stdout
    scales = res["scales"]
    print(f"checkpoints: {', '.join(res['checkpoints'])}"
          f"{' (ensemble: posteriors averaged)' if len(res['checkpoints']) > 1 else ''}", file=out)
    print(f"dataset:     {dataset_desc}", file=out)
    print(f"evaluated:   {res['n']} images", file=out)
    print(f"protocol:    {res['protocol']}, test scales Q = {scales}", file=out)
    print(f"top-1 error: {100 * res['top1_error']:6.2f} %   (accuracy {100 * res['top1']:.2f} %)",
          file=out)
    print(f"top-5 error: {100 * res['top5_error']:6.2f} %   (accuracy {100 * res['top5']:.2f} %)",
          file=out)
    print(f"time:        {res['time_s']:.1f} s", file=out)


def _model_classes(cks, paths):
    """The class names the checkpoints were trained on (None when they do not say);
    ValueError when the models of an ensemble know different classes."""
    named = [(p, list(ck.meta.get("classes") or [])) for ck, p in zip(cks, paths)
             if (ck.meta or {}).get("classes")]
    for p, c in named[1:]:
        if c != named[0][1]:
            raise ValueError(f"{p} was trained on other classes than {named[0][0]} "
                             f"({c[:3]}... vs {named[0][1][:3]}...); an ensemble needs the same "
                             f"classes in the same order")
    return named[0][1] if named else None


def cmd_evaluate(args):
    """``python -m tinyvgg evaluate CK [CK ...]``: load the checkpoint(s) (several make an
    ensemble), the dataset (default: the one in the first checkpoint's training config),
    evaluate with ``--protocol`` and print the result (``--json``: as JSON);
    ``--plots DIR`` writes ``DIR/confusion_matrix.png``. Returns 0."""
    from . import backend, checkpoint
    from .evaluate_protocols import as_eval_model, evaluate_protocol, load_eval_dataset

    backend.use(getattr(args, "device", "cpu") or "cpu")
    cks = [checkpoint.load(p) for p in args.checkpoints]
    for ck in cks:
        ck.warn_if_not_normalized()
    ems = [as_eval_model(ck, name=str(p)) for ck, p in zip(cks, args.checkpoints)]
    tc = (cks[0].meta or {}).get("train_config") or {}
    name = args.dataset or tc.get("dataset")
    if name is None:
        raise ValueError(f"{args.checkpoints[0]}: the checkpoint does not say which dataset it "
                         f"was trained on; give --dataset (and --data-dir)")
    data_dir = args.data_dir
    if data_dir is None and name == tc.get("dataset"):
        data_dir = tc.get("data_dir")
    classes = _model_classes(cks, args.checkpoints)
    ds, split, desc = load_eval_dataset(name, data_dir, args.split, ems, tc)
    if classes is not None:
        # Labels by class name: a folder lacking a class keeps the others' labels right.
        from .data import align_classes
        ds = align_classes(ds, classes, where=desc)
    ds, sampled = _seeded_subset(ds, getattr(args, "limit", None))
    desc += sampled
    progress = (not args.json) and sys.stderr.isatty()
    res = evaluate_protocol(ems, ds, args.protocol, scales=args.scales,
                            batch_size=args.batch_size, progress=progress,
                            return_posteriors=bool(args.plots))
    report = {k: res[k] for k in ("top1", "top5", "top1_error", "top5_error", "n", "protocol",
                                  "scales", "time_s")}
    report["checkpoints"] = [str(p) for p in args.checkpoints]
    report["dataset"] = name
    report["split"] = split
    report["images"] = desc
    if args.plots:
        from .evaluate import confusion_matrix
        from .plots import plot_confusion_matrix
        os.makedirs(args.plots, exist_ok=True)
        cm = confusion_matrix(res["predictions"], res["labels"], len(ds.classes))
        report["confusion_matrix"] = plot_confusion_matrix(
            cm, ds.classes, os.path.join(args.plots, "confusion_matrix.png"))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        res["checkpoints"] = report["checkpoints"]
        _print_result(res, f"{name}: {desc}")
        if args.plots:
            print(f"confusion matrix: {report['confusion_matrix']}")
    return 0


def cmd_predict(args):
    from . import backend, checkpoint
    from .data.imageio import decode_image
    from .data.transforms import EvalTransform
    from .evaluate import predict_proba
    from PIL import UnidentifiedImageError

    if args.top < 1:
        raise ValueError(f"--top must be at least 1 (how many of the most likely classes to "
                         f"print), got {args.top}")
    ck = checkpoint.load(args.checkpoint)
    ck.warn_if_not_normalized()
    meta = ck.meta
    classes = meta.get("classes") or [str(i) for i in range(ck.model.config["num_classes"])]
    size = meta.get("input_size") or ck.model.config["input_size"]
    mean = meta.get("mean")
    std = meta.get("std")
    channels = ck.model.layers[0].in_channels
    # Photos: shorter side to `resize` (torchvision's 256 for converted weights), centre crop.
    tf = EvalTransform(size, mean, std, scale=meta.get("resize", size) if channels == 3 else None,
                       dtype=ck.model.dtype)
    for path in args.images:
        try:
            arr = decode_image(path, "RGB" if channels == 3 else "L")
        except (OSError, UnidentifiedImageError) as e:
            print(f"{path}: cannot read the image ({e})", file=sys.stderr)
            return 2
        if channels == 1:
            if max(arr.shape[:2]) > size:
                from .data.transforms import rescale
                arr = rescale(arr, size)
        x = backend.to_device(tf([arr]))
        p = backend.to_host(predict_proba(ck.model, x))[0]
        order = np.argsort(-p)[:args.top]
        print(f"{path}:")
        for rank, k in enumerate(order, 1):
            print(f"  {rank}. {classes[k]:<24} {p[k]:.4f}")
    return 0


def cmd_summary(args):
    from .models import vgg

    model = vgg(args.model, num_classes=args.num_classes, input_size=args.input_size, width=args.width,
                batch_norm=args.batch_norm, hidden=args.hidden, init=None)
    print(model.summary())
    return 0


def cmd_gradcheck(args):
    from . import backend
    from .gradcheck import check_gradients
    from .models import vgg

    backend.seed(args.seed)
    model = vgg(args.model, num_classes=args.num_classes, input_size=args.input_size, width=args.width,
                batch_norm=args.batch_norm, hidden=args.hidden, init="he", dtype=np.float64)
    x = np.random.default_rng(args.seed).standard_normal((args.batch, 3, args.input_size, args.input_size))
    report = check_gradients(model, x, train=True, max_coords=args.coords, seed=args.seed)
    print(report)
    ok = report.passed(args.tol)
    print(f"{'PASSED' if ok else 'FAILED'}: max relative error {report.max_error:.2e} "
          f"(tolerance {args.tol:g}) over {len(report.results)} arrays"
          + (f"; {len(report.unchecked)} not checked (try another --seed)" if report.unchecked else ""))
    return 0 if ok else 1


def cmd_convert(args):
    from .interop import convert

    out = convert(args.src, args.dst, name=args.name, mean=args.mean, std=args.std,
                  resize=args.resize, allow_pickle=args.allow_pickle)
    print(f"wrote {out}")
    if str(args.src).lower().endswith(".npz"):
        from .checkpoint import load_header
        meta = load_header(args.src)["meta"]
        lost = [what for what, key in (("the input mean and std", "mean"), ("the class names", "classes"))
                if meta.get(key) is not None]
        if lost:
            mean = " ".join(f"{v:g}" for v in meta.get("mean") or [])
            std = " ".join(f"{v:g}" for v in meta.get("std") or [])
            print(f"note: a .pth holds the weights only; {' and '.join(lost)} of {args.src} are not "
                  f"in it" + (f" (converting it back needs --mean {mean} --std {std})" if mean and std
                              else ""))
    return 0


# The demo's settings: a quarter-width VGG-11 with BatchNorm on 32x32 Fashion-MNIST,
# eight epochs of the default recipe (one cycle to lr 0.1, Nesterov momentum, batch 128,
# no dropout, flip test-time augmentation). Random crops stay off:
# the net is still under-fitting at the end of so short a run (with 2-pixel crops, eight
# epochs ended at 0.9269 test accuracy with flip TTA, 93.8 % training accuracy); flips
# stay. benchmarks/results/demo_* holds a full run's metrics, history and curves.
DEMO = dict(model="vgg11", dataset="fashion-mnist", width=0.25, hidden=256, batch_norm=True,
            epochs=8, crop_padding=0, flip=True, val_size=5000)


def cmd_demo(args):
    from .train import TrainConfig, train

    settings = dict(DEMO, out=args.out, data_dir=args.data_dir)
    if args.epochs:
        settings["epochs"] = args.epochs
    cfg = TrainConfig(**settings)
    print("tinyvgg demo: VGG-11 (configuration A of the paper) at width 1/4 with BatchNorm, "
          "trained from scratch on Fashion-MNIST (images padded to 32x32).")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items() if k != "data_dir"))
    print(f"recipe: {cfg.recipe} (batch {cfg.batch_size}, {cfg.schedule} to lr {cfg.lr:g}, "
          f"{'Nesterov ' if cfg.nesterov else ''}momentum {cfg.momentum:g}, weight decay {cfg.weight_decay:g}, "
          f"label smoothing {cfg.label_smoothing:g}, dropout {cfg.dropout:g}, flip TTA {'on' if cfg.tta_flip else 'off'})")
    metrics = train(cfg)
    print(f"run folder: {args.out} (history.json, curves.png, checkpoint.npz, metrics.json)")
    return 0 if metrics["test_accuracy"] > 0 else 1


def cmd_doctor(args):
    """``python -m tinyvgg doctor ...``: a short run, the table, the diagnoses, the
    plots and the fix the doctor believes in.

    Trains about ``--steps`` steps (default 200; ``--epochs`` is not used) at the
    constant learning rate ``--lr``, records every ``--every`` steps (default:
    about 30 recordings), writes the report, data and plot into ``--out``
    (default ``runs/doctor``). Returns 0 (the diagnoses are the output)."""
    from .doctor import DEFAULT_STEPS, run_doctor
    from .train import TrainConfig

    cfg = _config_from_args(args)
    if cfg.out == TrainConfig.out:
        cfg.out = "runs/doctor"
    # A schedule meant for a whole run (plateau, step, cosine) would cut the learning rate
    # within the probe's few hundred steps: the probe runs at the constant --lr (after
    # --warmup-epochs, if any). The one cycle keeps its warm-up: its pct_start of the
    # probe's first epoch (the probe is one epoch unless --steps asks for more), so the
    # probe starts as the real run does instead of at the peak rate.
    if cfg.schedule == "onecycle" and not cfg.warmup_epochs:
        cfg.warmup_epochs = cfg.pct_start
    cfg.schedule = "constant"
    steps = args.steps if args.steps is not None else DEFAULT_STEPS
    print(f"tinyvgg doctor: training {cfg.model} (width {cfg.width}, "
          f"{'with' if cfg.batch_norm else 'without'} BatchNorm, init {cfg.init}, constant lr "
          f"{cfg.lr:g}{f' after {cfg.warmup_epochs:g} epochs of warm-up' if cfg.warmup_epochs else ''}, dropout {cfg.dropout:g}) for about {steps} steps on {cfg.dataset}; "
          f"run folder {cfg.out}", flush=True)
    doctor = run_doctor(cfg, steps=steps, every=args.every, verbose=False)
    print()
    print(doctor.summary())
    print()
    print(doctor.table())
    print()
    print("Diagnoses")
    if not doctor.diagnoses:
        print("No problem found: the checks stayed silent.")
    for d in doctor.ordered():
        print(d.text())
        print()
    fix, why = doctor.suggested_fix()
    alt = doctor.alternative_fix()
    if fix:
        print(f"The doctor suggests: {' '.join(fix)}   (because of {why})")
        print(f"  python -m tinyvgg doctor {_rebuild_argv(args, fix)}")
        if alt:
            print(f"or, without that change: {' '.join(alt)}")
            print(f"  python -m tinyvgg doctor {_rebuild_argv(args, alt)}")
    elif doctor.kinds(include_resolved=False):
        print("Problems remain (see above), but no single command-line change is clearly the fix.")
    elif doctor.diagnoses:
        print("What was seen earlier is gone by the end of the run.")
    else:
        print("The run looks healthy.")
    print(f"\nreport: {doctor.files.get('report')}  plot: {doctor.files.get('plot')}  "
          f"data: {doctor.files.get('json')}")
    return 0


def _rebuild_argv(args, fix):
    """The doctor's command line with ``fix`` applied (only the non-default settings)."""
    from .train import TrainConfig

    d = TrainConfig()
    parts = []
    fix_keys = {fix[i].lstrip("-").replace("-", "_") for i in range(len(fix)) if fix[i].startswith("--")}
    for key in ("model", "width", "hidden", "batch_norm", "dropout", "init", "dataset", "data_dir",
                "input_size", "val_size", "batch_size", "lr", "momentum", "weight_decay", "schedule",
                "warmup_epochs", "limit", "seed", "split_seed", "device", "dtype"):
        v = getattr(args, key, None)
        if key in fix_keys or v is None:
            continue
        if key == "batch_norm":
            parts.append("--batch-norm" if v else "--no-batch-norm")
            continue
        if key not in ("model", "dataset", "data_dir", "limit", "width", "init") and v == getattr(d, key):
            continue
        parts.append(f"--{key.replace('_', '-')} {shlex.quote(str(v))}")
    for key in ("steps", "every"):
        if getattr(args, key, None):
            parts.append(f"--{key} {getattr(args, key)}")
    return " ".join(parts + list(fix))


def cmd_mpi_info(args):
    """``python -m tinyvgg mpi-info``: the MPI this process gets (what
    ``python -m tinyvgg.distributed --info`` printed). Exit status 2 without MPI."""
    from .distributed import DistributedError, mpi_info

    try:
        lines = mpi_info()
    except DistributedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "summary": cmd_summary,
            "gradcheck": cmd_gradcheck, "convert": cmd_convert, "demo": cmd_demo, "doctor": cmd_doctor,
            "mpi-info": cmd_mpi_info}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from .backend import GPUUnavailableError
    from .data import DatasetNotFoundError
    from .replicas import ReplicaError
    from .train import GPUOutOfMemory, TrainingDiverged
    try:
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print("stopped.", file=sys.stderr)
        return 130
    except (DatasetNotFoundError, TrainingDiverged, GPUOutOfMemory, GPUUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ReplicaError as e:  # not the input's fault: a helper process failed (exit status 1)
        print(f"error: {e}. The run folder keeps its last checkpoint: continue with --resume, "
              f"adding --replicas 1 to train without helper processes", file=sys.stderr)
        return 1
    except (ValueError, ImportError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that is missing, a file where a folder belongs, no permission
        print(f"error: {type(e).__name__}: {e} (check the paths given)", file=sys.stderr)
        return 2
