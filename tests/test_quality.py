"""The defaults meet the quality targets on the shared COCO subset, through the library path."""

from __future__ import annotations

import os

import fiftyone as fo
import pytest

from xpatch_core import runs
from xpatch_core.metrics import evaluate_patches


@pytest.mark.slow
def test_defaults_meet_quality_targets_on_coco(coco_dir, xception_weights):
    ds = fo.Dataset.from_dir(
        dataset_type=fo.types.COCODetectionDataset,
        data_path=os.path.join(coco_dir, "images"),
        labels_path=os.path.join(coco_dir, "annotations.json"),
        label_types="detections",
        label_field="gt",
    )
    try:
        # Every setting is the default but the offline weights file.
        runs.run_saliency(ds, "saliency", "xception", weights=xception_weights)
        runs.run_patches(ds, "saliency", "patches")
        ev = evaluate_patches(ds, "patches", "gt")
        print(f"\ndefaults on {len(ds)} COCO images: object-hit {ev['hit_rate']:.3f}, uniform "
              f"{ev['uniform_rate']:.3f} ({ev['ratio']:.2f}x; {ev['ratio_expected']:.2f}x the exact expectation), pointing game {ev['pointing_game']:.3f}")
        # against the uniform baseline's exact expectation: the sampled baseline adds noise
        # (its boxes, like the patches', are drawn anew for each run's sample ids)
        assert ev["ratio_expected"] >= 1.5, ev["ratio_expected"]
        assert ev["pointing_game"] >= 0.90
        stored = runs.get_run_info(ds, "patches")["results"]["evaluation"]
        assert stored["hit_rate"] == pytest.approx(ev["hit_rate"])
    finally:
        ds.delete()
