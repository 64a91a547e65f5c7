"""What a heatmap costs per sample, in the database and as a PNG (the README quotes these figures)."""

from __future__ import annotations

import os

import bson
import fiftyone as fo
import numpy as np

from xpatch_core import runs
from xpatch_core.defaults import HEATMAP
from xpatch_core.heatmaps import decode_network_map, display_size


def test_heatmap_bytes_per_sample(xception_weights, kitchen, tmp_path):
    from xpatch_core.offline import kitchenware_images

    ds = fo.Dataset()
    try:
        ds.add_samples([fo.Sample(filepath=p) for p in kitchenware_images()[:3]])
        runs.run_saliency(ds, "saliency", "xception", "eigencam", weights=xception_weights)
        docs = list(ds._sample_collection.find({}))
        sizes = [len(bson.encode({"saliency": d["saliency"]})) for d in docs]
        maps = [len(d["saliency"]["map"]) for d in docs]
        ds.compute_metadata()
        for s in ds:
            m = s.saliency.map
            assert m.dtype == np.uint8 and s.saliency.range == [0, 255]
            w, h = s.metadata.width, s.metadata.height
            assert (m.shape[1], m.shape[0]) == display_size((w, h)) and max(m.shape) == min(HEATMAP["long_side"],
                                                                                             max(w, h))
            assert decode_network_map(s.saliency.network_map).shape == (19, 19)  # provenance: the network's map
        runs.run_saliency(ds, "png", "xception", "eigencam", weights=xception_weights, map_dir=str(tmp_path))
        pngs = [os.path.getsize(p) for p in ds.values("png.map_path")]
        print(f"\nXception fused heatmap at display size {HEATMAP['long_side']} px (long side), 8-bit: "
              f"{max(sizes)} bytes per sample in the database ({max(maps)} for the map itself); "
              f"as PNG with map_dir: {max(pngs)} bytes per file")
        assert all(s < 64 * 1024 for s in sizes) and all(p < 48 * 1024 for p in pngs)
    finally:
        ds.delete()
