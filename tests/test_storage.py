"""What a heatmap costs in the database (the README quotes this figure)."""

from __future__ import annotations

import bson
import fiftyone as fo

from xpatch_core import runs


def test_heatmap_bytes_per_sample(xception_weights, kitchen):
    from xpatch_core.offline import kitchenware_images

    ds = fo.Dataset()
    try:
        ds.add_samples([fo.Sample(filepath=p) for p in kitchenware_images()[:3]])
        runs.run_saliency(ds, "saliency", "xception", "eigencam", weights=xception_weights)
        sizes = [len(bson.encode({"saliency": d["saliency"]})) for d in ds._sample_collection.find({})]
        maps = [len(d["saliency"]["map"]) for d in ds._sample_collection.find({})]
        print(f"\nXception 19x19 (fused) heatmap in the database: {max(sizes)} bytes per sample "
              f"({max(maps)} for the map itself)")
        assert all(s < 2048 for s in sizes)
    finally:
        ds.delete()
