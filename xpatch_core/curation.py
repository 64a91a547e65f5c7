"""Curating patch datasets from patch embeddings, with FiftyOne Brain.

Every function takes a FiftyOne collection (a dataset or a view of its
images; a patches view stands for the images behind it) with a ``fo.Detections`` patches
field whose detections carry an embedding attribute (``embedding`` by
default: the convention of FiftyOne's ``compute_patch_embeddings``, and what
:func:`xpatch_core.runs.run_embeddings` writes). Detections without an
embedding are left out (and counted).

| function | what it does | stored as |
| --- | --- | --- |
| :func:`compute_similarity_index` | a Brain similarity index over the patches; the App's "sort by similarity" on the patches view uses it | a Brain run |
| :func:`tag_duplicates` / :func:`clear_duplicates` | near-duplicates across the collection by a cosine-distance threshold | label tag ``xpatch:duplicate`` |
| :func:`select_diverse` / :func:`clear_diverse` | ``n`` patches spread over the embedding space (k-centre greedy) | label tag ``xpatch:diverse``, optionally a saved view |
| :func:`compute_patch_map` | a 2-D map for the App's embeddings panel | a Brain run |

How Brain reads the embeddings: ``compute_similarity`` and
``compute_visualization`` are called with ``patches_field=FIELD`` and
``embeddings=ATTRIBUTE`` (a string): Brain 0.25 resolves it to the label path
``FIELD.detections.ATTRIBUTE`` (``parse_data_field``), keeps the detections
where it is not None (``filter_labels``) and reads the vectors with
``values()``, so patch ids line up with the App's patches view.

Nothing is deleted: duplicates and the diverse subset are label tags, which
:func:`clear_duplicates` and :func:`clear_diverse` remove again. Cosine
distance is ``1 - cos``; embeddings are L2-normalised on reading, so
vectors of any norm work.

Cost: the functions read every embedding of the collection into memory (``n
x d`` float32: 320,000 patches of 2,048 dimensions are 2.6 GB). Near-duplicate
search compares all pairs in blocks (memory ``block x n``, time ``O(n^2 d)``);
the diverse subset costs ``O(n * count * d)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xpatch_core.defaults import CHOICES, CURATION, EMBEDDINGS
from xpatch_core.errors import ParameterError

__all__ = [
    "DiverseSelection",
    "DuplicateGroups",
    "PatchTable",
    "clear_diverse",
    "clear_duplicates",
    "compute_patch_map",
    "compute_similarity_index",
    "diverse_indices",
    "duplicate_groups",
    "load_patch_embeddings",
    "select_diverse",
    "tag_duplicates",
]

#: Label ids per tagging operation (keeps each query small).
_TAG_CHUNK = 5000
#: Similarity entries per block in the all-pairs search (``block x n``).
_BLOCK_ENTRIES = 16_000_000
#: Most pairs within the duplicate threshold before the search gives up.
_MAX_PAIRS = 5_000_000


@dataclass
class PatchTable:
    """The patch embeddings of a collection, one row per patch.

    Attributes:
        embeddings: float32 ``(n, d)``, L2-normalised
        sample_ids: the sample id of each row
        label_ids: the detection id of each row
        keys: the ``keep_by`` value of each row (``-inf`` where missing), or
            None
        missing: detections without an embedding (left out)
    """

    embeddings: np.ndarray
    sample_ids: list[str]
    label_ids: list[str]
    keys: np.ndarray | None = None
    missing: int = 0

    def __len__(self) -> int:
        return len(self.label_ids)


@dataclass
class DuplicateGroups:
    """Near-duplicate groups: each kept patch with the patches it stands for.

    Attributes:
        groups: ``(kept label id, [duplicate label ids], [cosine distances])``
            for every group with at least one duplicate
        tagged: the number of patches tagged as duplicates
        patches: the number of patches compared
        missing: detections without an embedding (not compared)
        threshold: the cosine-distance threshold
        tag: the label tag
    """

    groups: list[tuple[str, list[str], list[float]]] = field(default_factory=list)
    tagged: int = 0
    patches: int = 0
    missing: int = 0
    threshold: float = 0.0
    tag: str = ""


@dataclass
class DiverseSelection:
    """A diverse subset of patches.

    Attributes:
        label_ids: the selected detections, in selection order
        sample_ids: their samples
        coverage: the largest cosine distance from any patch to its nearest
            selected patch (smaller is better covered)
        patches: the number of patches selected from
        missing: detections without an embedding (not considered)
        tag: the label tag
        view_name: the saved view, or None
    """

    label_ids: list[str]
    sample_ids: list[str]
    coverage: float
    patches: int
    missing: int
    tag: str
    view_name: str | None = None


def _check_patches_field(sample_collection: Any, patches_field: str) -> None:
    import fiftyone as fo
    if not isinstance(patches_field, str) or not patches_field:
        raise ParameterError(f"patches_field must be a field name, got {patches_field!r}")
    f = sample_collection.get_field(patches_field)
    if f is None:
        raise ParameterError(f"collection has no field {patches_field!r}")
    if getattr(f, "document_type", None) is not fo.Detections:
        raise ParameterError(f"field {patches_field!r} is not a fo.Detections field")


def _images(sample_collection: Any) -> Any:
    """The images behind a collection (a patches view stands for its images)."""
    from xpatch_core.runs import images_of

    return images_of(sample_collection)


def _dataset_of(sample_collection: Any) -> Any:
    import fiftyone as fo

    if isinstance(sample_collection, fo.Dataset):
        return sample_collection
    return fo.load_dataset(sample_collection.dataset_name)


def _check_attribute(attribute: str) -> None:
    if not isinstance(attribute, str) or not attribute or "." in attribute or attribute.startswith("_"):
        raise ParameterError(f"attribute must be a plain attribute name, got {attribute!r}")


def _vector(value: Any, where: str) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        # an undeclared numpy attribute comes back in FiftyOne's binary vector form
        import fiftyone.core.fields as fof

        try:
            value = fof.VectorField().to_python(value)
        except Exception:  # noqa: BLE001 - other bytes are not an embedding
            raise ParameterError(f"{where} holds bytes, not an embedding vector") from None
    if isinstance(value, (str, bytes, dict, bool)):
        raise ParameterError(f"{where} holds a {type(value).__name__}, not an embedding vector")
    try:
        v = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise ParameterError(f"{where} holds {type(value).__name__} values, not embedding vectors") from None
    if v.ndim != 1 or v.size == 0:
        raise ParameterError(f"{where} holds arrays of shape {v.shape}, not 1-D embedding vectors")
    return v


def load_patch_embeddings(
    sample_collection: Any,
    patches_field: str = EMBEDDINGS["patches_field"],
    attribute: str = EMBEDDINGS["attribute"],
    keep_by: str | None = None,
) -> PatchTable:
    """Reads the patch embeddings of a collection.

    Args:
        sample_collection: a FiftyOne collection
        patches_field: the ``fo.Detections`` field
        attribute: the detections' embedding attribute
        keep_by: a numeric detection attribute to read along (e.g.
            ``"confidence"``), or None

    Returns:
        a :class:`PatchTable` (rows with zero or non-finite vectors are left
        out and counted as missing)

    Raises:
        ParameterError: if the field or attribute is missing or holds
            something else than vectors of one length
    """
    sample_collection = _images(sample_collection)
    _check_patches_field(sample_collection, patches_field)
    _check_attribute(attribute)
    paths = ["id", f"{patches_field}.detections.id", f"{patches_field}.detections.{attribute}"]
    if keep_by is not None:
        _check_attribute(keep_by)
        paths.append(f"{patches_field}.detections.{keep_by}")
    cols = sample_collection.values(paths)
    keys_col = cols[3] if keep_by is not None else None
    vecs, sids, lids, keys = [], [], [], []
    missing, dim = 0, None
    where = f"attribute {attribute!r} of field {patches_field!r}"
    for s, (sid, dids, embs) in enumerate(zip(cols[0], cols[1], cols[2])):
        for k, did in enumerate(dids or []):
            v = _vector(embs[k] if embs else None, where)
            if v is None or not np.isfinite(v).all() or not np.any(v):
                missing += 1
                continue
            if dim is None:
                dim = v.size
            elif v.size != dim:
                raise ParameterError(f"{where} holds vectors of lengths {dim} and {v.size}")
            vecs.append(v)
            sids.append(sid)
            lids.append(did)
            if keys_col is not None:
                raw = (keys_col[s] or [None] * len(dids))[k]
                keys.append(float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool)
                            and math.isfinite(raw) else -math.inf)
    emb = np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, 0), np.float32)
    if vecs:
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return PatchTable(emb, sids, lids, np.asarray(keys, np.float64) if keep_by is not None else None, missing)


def _nonempty(table: PatchTable, patches_field: str, attribute: str) -> None:
    if len(table) == 0:
        raise ParameterError(
            f"no detection of field {patches_field!r} has an {attribute!r} attribute; compute patch "
            "embeddings first (xpatch_core.runs.run_embeddings)")


def _declare_vectors(sample_collection: Any, patches_field: str, attribute: str) -> None:
    """Declares an undeclared embedding attribute as a vector field, which
    Brain needs to find it (the values are already checked to be vectors)."""
    import fiftyone.core.fields as fof

    path = f"{patches_field}.detections.{attribute}"
    dataset = _dataset_of(sample_collection)
    if not dataset.has_field(path):
        dataset.add_sample_field(path, fof.VectorField)


def _brain_key(key: str | None, patches_field: str, suffix: str) -> str:
    key = key or f"xpatch_{patches_field}_{suffix}"
    if not key.replace("_", "").isalnum():
        raise ParameterError(f"brain key {key!r} must contain only letters, digits and underscores")
    return key


def _free_brain_key(sample_collection: Any, key: str, overwrite: bool) -> None:
    if sample_collection.has_brain_run(key):
        if not overwrite:
            raise ParameterError(f"brain key {key!r} exists; pass overwrite=True to replace it")
        sample_collection.delete_brain_run(key)


def compute_similarity_index(
    sample_collection: Any,
    patches_field: str = EMBEDDINGS["patches_field"],
    *,
    attribute: str = EMBEDDINGS["attribute"],
    brain_key: str | None = CURATION["similarity_key"],
    backend: str = "sklearn",
    overwrite: bool = False,
    progress: bool | None = None,
) -> Any:
    """Builds a FiftyOne Brain similarity index over the patches.

    In the App, open the patches view of ``patches_field``, select a patch
    and "sort by similarity"; in Python,
    ``dataset.to_patches(field).sort_by_similarity(label_id, brain_key=key)``.

    Args:
        sample_collection: a FiftyOne collection
        patches_field: the ``fo.Detections`` field
        attribute: the detections' embedding attribute
        brain_key: the Brain key; default ``xpatch_<field>_sim``
        backend: the Brain similarity backend (``"sklearn"`` needs no
            service)
        overwrite: replace an existing Brain run with this key
        progress: FiftyOne's progress setting

    Returns:
        the ``fiftyone.brain.SimilarityIndex``

    Raises:
        ParameterError: if the field has no embeddings or the key is taken
    """
    sample_collection = _images(sample_collection)
    import fiftyone.brain as fob

    key = _brain_key(brain_key, patches_field, "sim")
    table = load_patch_embeddings(sample_collection, patches_field, attribute)
    _nonempty(table, patches_field, attribute)
    _free_brain_key(sample_collection, key, overwrite)
    _declare_vectors(sample_collection, patches_field, attribute)
    return fob.compute_similarity(sample_collection, patches_field=patches_field, embeddings=attribute,
                                  brain_key=key, backend=backend, metric="cosine", progress=progress)


def compute_patch_map(
    sample_collection: Any,
    patches_field: str = EMBEDDINGS["patches_field"],
    *,
    attribute: str = EMBEDDINGS["attribute"],
    method: str = CURATION["visualization_method"],
    brain_key: str | None = CURATION["visualization_key"],
    seed: int = CURATION["seed"],
    overwrite: bool = False,
    progress: bool | None = None,
) -> Any:
    """Computes a 2-D map of the patches for the App's embeddings panel.

    Args:
        sample_collection: a FiftyOne collection
        patches_field: the ``fo.Detections`` field
        attribute: the detections' embedding attribute
        method: ``"pca"`` (fast, any size), ``"tsne"`` (scikit-learn) or
            ``"umap"`` (needs ``umap-learn``)
        brain_key: the Brain key; default ``xpatch_<field>_map``
        seed: the random seed (t-SNE, UMAP)
        overwrite: replace an existing Brain run with this key
        progress: FiftyOne's progress setting

    Returns:
        the ``fiftyone.brain.VisualizationResults``

    Raises:
        ParameterError: for an unknown method, a missing package, no
            embeddings, or a key that is taken
    """
    sample_collection = _images(sample_collection)
    import importlib.util

    import fiftyone.brain as fob

    if method not in CHOICES["visualization_method"]:
        raise ParameterError(f"method must be one of {', '.join(CHOICES['visualization_method'])}, got {method!r}")
    if method == "umap" and importlib.util.find_spec("umap") is None:
        raise ParameterError("method 'umap' needs the umap-learn package (pip install umap-learn); "
                             "or use 'pca' or 'tsne'")
    key = _brain_key(brain_key, patches_field, "map")
    table = load_patch_embeddings(sample_collection, patches_field, attribute)
    _nonempty(table, patches_field, attribute)
    if len(table) < 3:
        raise ParameterError(f"a 2-D map needs at least 3 patches with embeddings, found {len(table)}")
    _free_brain_key(sample_collection, key, overwrite)
    _declare_vectors(sample_collection, patches_field, attribute)
    kwargs: dict[str, Any] = {"seed": int(seed)}
    if method == "tsne":
        kwargs["perplexity"] = float(min(30.0, max(1.0, (len(table) - 1) / 3.0)))
        # Brain first reduces to 50 dimensions by PCA, which needs more rows and columns than that.
        if min(table.embeddings.shape) <= 50:
            kwargs["pca_dims"] = None
    return fob.compute_visualization(sample_collection, patches_field=patches_field, embeddings=attribute,
                                     brain_key=key, method=method, num_dims=2, progress=progress, **kwargs)


def _radius_pairs(emb: np.ndarray, threshold: float,
                  owner: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` within ``threshold`` cosine distance, in blocks
    (pairs with the same ``owner`` left out when given)."""
    n = emb.shape[0]
    block = max(1, _BLOCK_ENTRIES // max(n, 1))
    rows, cols, dists = [], [], []
    count = 0
    for s in range(0, n, block):
        sim = emb[s:s + block] @ emb.T
        i, j = np.nonzero(sim >= np.float32(1.0 - threshold))
        keep = j > i + s
        if owner is not None:
            keep &= owner[i + s] != owner[j]
        i, j = i[keep], j[keep]
        rows.append(i + s)
        cols.append(j)
        dists.append(np.maximum(0.0, 1.0 - sim[i, j].astype(np.float64)))
        count += i.size
        if count > _MAX_PAIRS:
            raise ParameterError(f"more than {_MAX_PAIRS:,} patch pairs lie within cosine distance {threshold}; "
                                 "that is not near-duplication: lower the threshold")
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(dists)


def duplicate_groups(embeddings: np.ndarray, threshold: float, priority: np.ndarray | None = None,
                     owner: np.ndarray | None = None) -> list[tuple[int, list[int], list[float]]]:
    """Groups near-duplicates around kept representatives (pure NumPy).

    Patches are visited by decreasing ``priority`` (ties and ``None``: row
    order). A patch not yet claimed is kept and claims every unclaimed patch
    within ``threshold`` cosine distance of it as its duplicate. So every
    duplicate lies within the threshold of its kept patch (no chains), and
    each kept patch has the highest priority of its group.

    Args:
        embeddings: ``(n, d)`` L2-normalised rows
        threshold: cosine distance in ``[0, 2]``
        priority: ``(n,)`` values, higher kept first, or None
        owner: ``(n,)`` group of each row (e.g. its image); rows of one
            group are never each other's duplicates. None: any two rows may be

    Returns:
        ``(kept row, [duplicate rows], [distances])`` for every group with a
        duplicate, by kept order
    """
    n = embeddings.shape[0]
    i, j, d = _radius_pairs(np.asarray(embeddings, np.float32), threshold,
                            None if owner is None else np.asarray(owner))
    order = np.arange(n) if priority is None else np.lexsort((np.arange(n), -np.asarray(priority, np.float64)))
    nbrs: dict[int, list[tuple[int, float]]] = {}
    for a, b, dist in zip(i.tolist(), j.tolist(), d.tolist()):
        nbrs.setdefault(a, []).append((b, dist))
        nbrs.setdefault(b, []).append((a, dist))
    claimed = np.zeros(n, bool)
    groups = []
    for r in order.tolist():
        if claimed[r]:
            continue
        claimed[r] = True
        dups = [(b, dist) for b, dist in sorted(nbrs.get(r, []), key=lambda t: (t[1], t[0])) if not claimed[b]]
        for b, _ in dups:
            claimed[b] = True
        if dups:
            groups.append((r, [b for b, _ in dups], [dist for _, dist in dups]))
    return groups


def _tag_labels(sample_collection: Any, patches_field: str, label_ids: Sequence[str], tag: str) -> None:
    for s in range(0, len(label_ids), _TAG_CHUNK):
        chunk = list(label_ids[s:s + _TAG_CHUNK])
        sample_collection.select_labels(ids=chunk, fields=patches_field).tag_labels(tag, label_fields=patches_field)


def _check_tag(tag: str) -> None:
    if not isinstance(tag, str) or not tag.strip():
        raise ParameterError(f"tag must be a non-empty text, got {tag!r}")


def _clear_tag(sample_collection: Any, patches_field: str, tag: str) -> int:
    _check_patches_field(sample_collection, patches_field)
    _check_tag(tag)
    counts = sample_collection.count_label_tags(label_fields=patches_field)
    n = int(counts.get(tag, 0))
    if n:
        sample_collection.untag_labels(tag, label_fields=patches_field)
    return n


def tag_duplicates(
    sample_collection: Any,
    patches_field: str = EMBEDDINGS["patches_field"],
    threshold: float = CURATION["duplicate_threshold"],
    *,
    attribute: str = EMBEDDINGS["attribute"],
    keep_by: str | None = CURATION["keep_by"],
    tag: str = CURATION["duplicate_tag"],
    same_image: bool = CURATION["same_image"],
) -> DuplicateGroups:
    """Tags near-duplicate patches across the collection (never deletes).

    Rule: patches are visited by decreasing ``keep_by`` (the highest score
    first; missing values last; ties in collection order). A patch not yet
    claimed is kept, and every unclaimed patch within ``threshold`` cosine
    distance of it is tagged ``tag`` as its duplicate. Previous ``tag``
    label tags of the field in the collection are cleared first, so the tags
    always reflect the last call; :func:`clear_duplicates` removes them.

    By default only patches of different images are compared
    (``same_image=False``): pooled embeddings make overlapping patches of
    one image close (see ``docs/curation.md``), and the patch sampler
    already controls their overlap.

    Args:
        sample_collection: a FiftyOne collection
        patches_field: the ``fo.Detections`` field
        threshold: cosine distance (``1 - cos``) in ``[0, 2)``
        attribute: the detections' embedding attribute
        keep_by: a numeric detection attribute, higher kept first
            (default ``"confidence"``, the patch score), or None for
            collection order
        tag: the label tag for duplicates
        same_image: also compare patches of the same image

    Returns:
        a :class:`DuplicateGroups`

    Raises:
        ParameterError: for an invalid threshold, field or attribute
    """
    sample_collection = _images(sample_collection)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 2:
        raise ParameterError(f"threshold must be a cosine distance in [0, 2), got {threshold!r}")
    _check_tag(tag)
    if not isinstance(same_image, bool):
        raise ParameterError(f"same_image must be true or false, got {same_image!r}")
    table = load_patch_embeddings(sample_collection, patches_field, attribute, keep_by=keep_by)
    _nonempty(table, patches_field, attribute)
    owner = None if same_image else np.unique(np.asarray(table.sample_ids), return_inverse=True)[1]
    groups = duplicate_groups(table.embeddings, float(threshold), table.keys, owner)
    _clear_tag(sample_collection, patches_field, tag)
    dup_ids = [table.label_ids[b] for _, dups, _ in groups for b in dups]
    _tag_labels(sample_collection, patches_field, dup_ids, tag)
    return DuplicateGroups(
        groups=[(table.label_ids[r], [table.label_ids[b] for b in dups], dists) for r, dups, dists in groups],
        tagged=len(dup_ids), patches=len(table), missing=table.missing, threshold=float(threshold), tag=tag)


def clear_duplicates(sample_collection: Any, patches_field: str = EMBEDDINGS["patches_field"],
                     tag: str = CURATION["duplicate_tag"]) -> int:
    """Removes the duplicate tags (undoes :func:`tag_duplicates`).

    Args:
        sample_collection: a FiftyOne collection
        patches_field: the ``fo.Detections`` field
        tag: the label tag

    Returns:
        the number of patches untagged
    """
    sample_collection = _images(sample_collection)
    return _clear_tag(sample_collection, patches_field, tag)


def diverse_indices(embeddings: np.ndarray, count: int, seed: int = CURATION["seed"]) -> tuple[np.ndarray, float]:
    """K-centre greedy (farthest-point) selection (pure NumPy).

    The first row is drawn with ``numpy.random.default_rng(seed)``; each next
    one is the row farthest (cosine distance) from all selected so far
    (ties: the lowest row). Deterministic given the seed.

    Args:
        embeddings: ``(n, d)`` L2-normalised rows
        count: how many to select (all rows if ``count >= n``)
        seed: the seed of the first pick

    Returns:
        ``(rows, coverage)``: selected rows in selection order, and the
        largest distance from any row to its nearest selected row
    """
    e = np.asarray(embeddings, np.float32)
    n = e.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), 0.0
    count = min(int(count), n)
    first = int(np.random.default_rng(seed).integers(n))
    chosen = [first]
    mind = np.maximum(0.0, 1.0 - e @ e[first])
    mind[first] = 0.0
    for _ in range(count - 1):
        nxt = int(np.argmax(mind))
        chosen.append(nxt)
        mind = np.minimum(mind, np.maximum(0.0, 1.0 - e @ e[nxt]))
        mind[nxt] = 0.0
    return np.asarray(chosen, np.int64), float(mind.max())


def select_diverse(
    sample_collection: Any,
    patches_field: str = EMBEDDINGS["patches_field"],
    count: int = CURATION["diverse_count"],
    *,
    attribute: str = EMBEDDINGS["attribute"],
    seed: int = CURATION["seed"],
    tag: str = CURATION["diverse_tag"],
    exclude_tag: str | None = CURATION["duplicate_tag"],
    view_name: str | None = None,
    overwrite: bool = False,
) -> DiverseSelection:
    """Selects ``count`` patches spread over the embedding space and tags them.

    K-centre greedy (:func:`diverse_indices`): after a seeded first pick,
    each next patch is the one farthest from those already picked. Previous
    ``tag`` label tags of the field in the collection are cleared first.

    Args:
        sample_collection: a FiftyOne collection
        patches_field: the ``fo.Detections`` field
        count: how many patches (all of them if fewer exist)
        attribute: the detections' embedding attribute
        seed: the seed of the first pick
        tag: the label tag for the selection
        exclude_tag: leave out patches with this label tag (the duplicates
            by default), or None
        view_name: also save the selection's patches view under this name
        overwrite: replace a saved view of that name

    Returns:
        a :class:`DiverseSelection`

    Raises:
        ParameterError: for an invalid count, seed or view name, or no
            embeddings
    """
    sample_collection = _images(sample_collection)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ParameterError(f"count must be an integer >= 1, got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    _check_tag(tag)
    dataset = _dataset_of(sample_collection)
    if view_name is not None:
        if not isinstance(view_name, str) or not view_name.strip():
            raise ParameterError(f"view_name must be a non-empty text, got {view_name!r}")
        if dataset.has_saved_view(view_name) and not overwrite:
            raise ParameterError(f"saved view {view_name!r} exists; pass overwrite=True to replace it")
    pool = sample_collection
    if exclude_tag:
        _check_patches_field(sample_collection, patches_field)
        from fiftyone import ViewField as F

        pool = sample_collection.filter_labels(patches_field, ~F("tags").contains(exclude_tag), only_matches=False)
    table = load_patch_embeddings(pool, patches_field, attribute)
    _nonempty(table, patches_field, attribute)
    rows, coverage = diverse_indices(table.embeddings, int(count), int(seed))
    ids = [table.label_ids[r] for r in rows]
    _clear_tag(sample_collection, patches_field, tag)
    _tag_labels(sample_collection, patches_field, ids, tag)
    if view_name is not None:
        view = dataset.select_labels(tags=tag, fields=patches_field).to_patches(patches_field)
        dataset.save_view(view_name, view, overwrite=overwrite)
    return DiverseSelection(ids, [table.sample_ids[r] for r in rows], coverage, len(table), table.missing, tag,
                            view_name)


def clear_diverse(sample_collection: Any, patches_field: str = EMBEDDINGS["patches_field"],
                  tag: str = CURATION["diverse_tag"], view_name: str | None = None) -> int:
    """Removes the diverse-subset tags and, if named, its saved view.

    Args:
        sample_collection: a FiftyOne collection
        patches_field: the ``fo.Detections`` field
        tag: the label tag
        view_name: a saved view to delete too, or None

    Returns:
        the number of patches untagged
    """
    sample_collection = _images(sample_collection)
    n = _clear_tag(sample_collection, patches_field, tag)
    dataset = _dataset_of(sample_collection)
    if view_name and dataset.has_saved_view(view_name):
        dataset.delete_saved_view(view_name)
    return n
