"""xpatch FiftyOne plugin: thin operators over :mod:`xpatch_core`.

| module | operators |
| --- | --- |
| ``saliency_ops`` | ``compute_saliency`` |
| ``patches_ops`` | ``sample_patches`` |
| ``run_ops`` | ``get_xpatch_run_info``, ``load_xpatch_run_view``, ``delete_xpatch_run`` |
| ``export_ops`` | ``export_patches``, ``evaluate_patches`` |
| ``dataset_ops`` | ``make_patch_dataset`` |
| ``curation_ops`` | ``compute_patch_embeddings``, ``build_patch_similarity``, ``tag_duplicate_patches``, ``clear_duplicate_patches``, ``select_diverse_patches``, ``compute_patch_map`` |
| ``runs_panel`` | the ``xpatch_runs`` panel (where FiftyOne has Python panels) |

Importing this package never imports TensorFlow.
"""

from __future__ import annotations

from typing import Any

from . import (
    common,  # noqa: F401 - first: puts a downloaded copy's library on the path
    curation_ops,
    dataset_ops,
    export_ops,
    patches_ops,
    run_ops,
    runs_panel,
    saliency_ops,
)

_MODULES = [saliency_ops, patches_ops, run_ops, export_ops, dataset_ops, curation_ops, runs_panel]


def register(p: Any) -> None:
    """Registers every xpatch operator and panel on the plugin context.

    Args:
        p: the FiftyOne plugin context
    """
    for module in _MODULES:
        module.register(p)
