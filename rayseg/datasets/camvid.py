"""CamVid (11 classes, as distributed with the SegNet tutorial) in MMSeg's custom layout."""
from __future__ import annotations

from rayseg.datasets.custom import CustomDataset
from rayseg.registry import DATASETS


@DATASETS.register()
class CamVidDataset(CustomDataset):
    """CamVid with SegNet's 11 classes; mask value 11 (void) is mapped to 255 (ignored).

    Layout: ``img_dir/{train,val}/*.png`` (RGB) and ``ann_dir/{train,val}/*.png`` (8-bit labels 0–11).
    A user ``label_map`` is merged over the default ``{11: 255}``.
    """

    CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
               "Pedestrian", "Bicyclist")
    # SegNet tutorial colours (RGB), in class order.
    PALETTE = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
               [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]]

    def __init__(self, pipeline, data_root=None, img_dir="", ann_dir=None, img_suffix=".png",
                 seg_map_suffix=".png", split=None, classes=None, palette=None, label_map=None,
                 reduce_zero_label=False, ignore_index=255, test_mode=False):
        super().__init__(pipeline=pipeline, data_root=data_root, img_dir=img_dir, ann_dir=ann_dir,
                         img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, split=split, classes=classes,
                         palette=palette, label_map=label_map, reduce_zero_label=reduce_zero_label,
                         ignore_index=ignore_index, test_mode=test_mode)

    def default_label_map(self):
        """Void (11) is ignored."""
        return {11: self.ignore_index}
