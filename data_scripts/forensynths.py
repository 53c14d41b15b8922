"""ForenSynths (CNNDetection, Wang et al. CVPR 2020): ProGAN train/val and the 13 test sets.

Examples::

    python data_scripts/forensynths.py --root /data/CNNDetection --dry-run
    python data_scripts/forensynths.py --root /data/CNNDetection --parts val,test
    python data_scripts/forensynths.py --root /data/CNNDetection            # all (~75 GB train)
    python data_scripts/forensynths.py --root /data/CNNDetection --validate-only

The training set ships as ``progan_train.7z.001``-``.007`` (a zip inside a split 7z):
7-Zip must be installed (``7z``/``7za``/``7zz``/``7zr``). Every address can be replaced
with ``--url NAME=URL`` (a mirror) or ``--archive FILE`` (a file you already have).
"""

from __future__ import annotations

import sys

from _fetch import Archive, DatasetSpec, main

#: Publisher: the CNNDetection dataset repository on Hugging Face (its download scripts
#: point here). Override any file with --url NAME=URL.
BASE_URL = "https://huggingface.co/datasets/sywang/CNNDetection/resolve/main/"

CLASSES = (
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
TEST_SETS = (
    "progan", "stylegan", "stylegan2", "biggan", "cyclegan", "stargan", "gaugan", "crn",
    "imle", "seeingdark", "san", "whichfaceisreal", "deepfake",
)
TRAIN_PARTS = tuple(f"progan_train.7z.{i:03d}" for i in range(1, 8))

SPEC = DatasetSpec(
    name="forensynths",
    description="ForenSynths (CNNDetection): ProGAN train/val (20 classes) and 13 test sets",
    archives=(
        *(Archive(n, BASE_URL + n, unpack_to="train", extract=n.endswith(".001"), part_of="progan_train.7z") for n in TRAIN_PARTS),
        Archive("progan_val.zip", BASE_URL + "progan_val.zip", unpack_to="val"),
        Archive("CNN_synth_testset.zip", BASE_URL + "CNN_synth_testset.zip", unpack_to="test"),
    ),
    groups={"train": TRAIN_PARTS, "val": ("progan_val.zip",), "test": ("CNN_synth_testset.zip",)},
    expected={"train": CLASSES, "val": CLASSES, "test": TEST_SETS},
    source=BASE_URL,
    layout=(
        "  ROOT/train/<class>/{0_real,1_fake}/     (20 ProGAN classes; --classes car,cat,chair,horse for 4-class)\n"
        "  ROOT/val/<class>/{0_real,1_fake}/\n"
        "  ROOT/test/<gen>/{0_real,1_fake}/        (progan, stylegan, stylegan2, cyclegan: <gen>/<class>/{0_real,1_fake})"
    ),
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
