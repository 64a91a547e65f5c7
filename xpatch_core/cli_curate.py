"""``xpatch curate``: patch embeddings and the curation steps, headless.

Rules:

-   The embedding run comes first and is the same resumable run as
    :func:`xpatch_core.runs.run_embeddings` (only patches without an
    embedding are computed; nothing to do loads no model).
-   Each curation step runs only when asked for, after the embeddings, in a
    fixed order: near-duplicates (tags, never deletes), the diverse subset
    (tags, optionally a saved view; duplicates left out), the similarity
    index, the 2-D map. Brain runs of the same key are replaced only with
    ``--overwrite``; embeddings are recomputed only with ``--recompute``.
-   A step that is wrong for the whole dataset (a threshold out of range, a
    name taken) is an error of the command; the steps before it are kept.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from xpatch_core.defaults import CHOICES, CURATION, EMBEDDINGS, SALIENCY


def add_parser(sub: Any, positive_int: Any, unit_float: Any) -> None:
    """Adds the ``curate`` command to the ``xpatch`` parser.

    Args:
        sub: the parser's subparsers
        positive_int: the argparse type of a positive integer
        unit_float: the argparse type of a number in ``[0, 1]``
    """
    p = sub.add_parser(
        "curate", help="patch embeddings, then near-duplicates, a diverse subset, similarity and a 2-D map",
        description="Compute one embedding per patch of DATASET's patches field (one forward pass per "
                    "image, resumable), then run the curation steps asked for. Duplicates and the "
                    "diverse subset are label tags (xpatch:duplicate, xpatch:diverse), never deletions.")
    p.add_argument("dataset", metavar="DATASET", help="the dataset")
    p.add_argument("--patches-field", default=None, help="its patches field (default: its only patch run)")
    p.add_argument("--model", default=EMBEDDINGS["model"],
                   help="keras.applications name or a saved .keras/.h5 classifier (default: xception)")
    p.add_argument("--weights", default=None, help="weights file for a named model (offline)")
    p.add_argument("--precision", choices=CHOICES["precision"], default=SALIENCY["precision"],
                   help="'auto' (default): bfloat16 where the hardware has it")
    p.add_argument("--engine", choices=CHOICES["engine"], default=SALIENCY["engine"],
                   help="what runs the forward pass ('auto' (default): OpenVINO on a CPU without native "
                        "bfloat16, TensorFlow elsewhere)")
    p.add_argument("--batch-size", type=positive_int, default=EMBEDDINGS["batch_size"])
    p.add_argument("--allow-unsafe-model", action="store_true",
                   help="load a saved model with Keras' safe mode OFF (only for files you trust)")
    p.add_argument("--duplicates", type=unit_float, default=None, metavar="DISTANCE",
                   help=f"tag near-duplicate patches within this cosine distance (e.g. "
                        f"{CURATION['duplicate_threshold']:g}); patches of different images are compared")
    p.add_argument("--diverse", type=positive_int, default=None, metavar="N",
                   help="tag N patches spread over the embedding space (k-centre)")
    p.add_argument("--view-name", default=None, help="also save the diverse patches as this saved view")
    p.add_argument("--similarity", action="store_true", help="build a similarity index (the App's sort by similarity)")
    p.add_argument("--map", action="store_true", help="compute a 2-D map for the App's embeddings panel (PCA)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace this command's Brain runs and a saved view of the same name")
    p.add_argument("--recompute", action="store_true",
                   help="recompute every embedding (also replaces an embedding attribute another tool wrote)")


def _patches_field(ds: Any, given: str | None) -> str:
    from xpatch_core.errors import ParameterError
    from xpatch_core.runs.records import fields_of_runs

    if given is not None:
        return given
    fields = fields_of_runs(ds, "patches")
    if len(fields) != 1:
        raise ParameterError("give --patches-field" + (f" (one of {', '.join(fields)})" if fields else
                                                         ": the dataset has no patch run"))
    return fields[0]


def _steps(ds: Any, field: str, args: argparse.Namespace) -> None:
    """Runs the curation steps asked for and prints one line for each."""
    from xpatch_core import curation

    if args.duplicates is not None:
        dup = curation.tag_duplicates(ds, field, args.duplicates)
        print(f"near-duplicates: {dup.tagged} of {dup.patches} patches tagged {dup.tag} "
              f"(within {dup.threshold:g} cosine distance of a patch kept, in {len(dup.groups)} groups)")
    if args.diverse is not None:
        div = curation.select_diverse(ds, field, args.diverse, view_name=args.view_name, overwrite=args.overwrite)
        where = f"; saved view {div.view_name!r}" if div.view_name else ""
        print(f"diverse subset: {len(div.label_ids)} of {div.patches} patches tagged {div.tag} "
              f"(every patch within {div.coverage:.3f} cosine distance of one picked){where}")
    if args.similarity:
        index = curation.compute_similarity_index(ds, field, overwrite=args.overwrite)
        print(f"similarity index: brain key {index.key!r}; in the App open the patches view of {field!r}, "
              "select a patch and sort by similarity")
    if args.map:
        results = curation.compute_patch_map(ds, field, overwrite=args.overwrite)
        print(f"2-D map: brain key {results.key!r}; open the App's embeddings panel on the patches view")


def cmd(args: argparse.Namespace, usage_error: type[Exception]) -> int:
    """Runs ``xpatch curate``.

    Args:
        args: the parsed arguments
        usage_error: the exception the command reports as a usage error

    Returns:
        the exit status: 0 done (even with per-sample failures), 1 when no
        patch has an embedding
    """
    import fiftyone as fo

    from xpatch_core.runs import run_embeddings

    if args.view_name is not None and args.diverse is None:
        raise usage_error("--view-name needs --diverse N")
    if not fo.dataset_exists(args.dataset):
        raise usage_error(f"dataset not found: {args.dataset}")
    ds = fo.load_dataset(args.dataset)
    field = _patches_field(ds, args.patches_field)
    summary = run_embeddings(ds, field, model=args.model, weights=args.weights, precision=args.precision,
                             engine=args.engine,
                             batch_size=args.batch_size, allow_unsafe=args.allow_unsafe_model,
                             overwrite=args.recompute, progress=True)
    print(f"embeddings of {field!r}: {summary.describe()}")
    for f in summary.failures[:10]:
        print(f"  failed: {f['filepath']}: {f['reason']}")
    embedded = ds.count(f"{field}.detections.{EMBEDDINGS['attribute']}")
    if not embedded:
        print("xpatch: no patch has an embedding", file=sys.stderr)
        return 1
    from xpatch_core.errors import ParameterError

    try:
        _steps(ds, field, args)
    except ParameterError as e:
        raise usage_error(str(e).replace("overwrite=True", "--overwrite")) from None
    return 0


__all__ = ["add_parser", "cmd"]
