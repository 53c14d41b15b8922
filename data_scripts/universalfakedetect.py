"""UniversalFakeDetect (Ojha et al. CVPR 2023) diffusion test sets.

Examples::

    python data_scripts/universalfakedetect.py --root /data/UniversalFakeDetect --dry-run
    python data_scripts/universalfakedetect.py --root /data/UniversalFakeDetect
    python data_scripts/universalfakedetect.py --root /data/UniversalFakeDetect \\
        --archive ~/Downloads/diffusion_datasets.zip     # a copy fetched in a browser

The publisher hosts ``diffusion_datasets.zip`` on Google Drive. Drive may answer a script
with a confirmation page or a quota error instead of the file; then download it in a
browser from ``DRIVE_PAGE`` and pass it with ``--archive``. A repacked copy with a
``0_real``/``1_fake`` pair per generator (one archive per generator) also works: pass each
archive with ``--archive``; ``python -m qmdd.eval`` reads both layouts.
"""

from __future__ import annotations

import sys

from _fetch import Archive, DatasetSpec, main

#: Google Drive file of the publisher (UniversalFakeDetect README, "diffusion datasets").
DRIVE_FILE_ID = "1FXlGIRh_Ud3cScMgSVDbEWmPDmjcrm1t"
DRIVE_PAGE = f"https://drive.google.com/file/d/{DRIVE_FILE_ID}/view"
#: Direct-download form of that file; override with --url diffusion_datasets.zip=URL.
URL = f"https://drive.usercontent.google.com/download?id={DRIVE_FILE_ID}&export=download&confirm=t"

FAKE_SETS = ("guided", "ldm_200", "ldm_200_cfg", "ldm_100", "glide_100_27", "glide_50_27", "glide_100_10", "dalle")
REAL_POOLS = ("laion", "imagenet")

SPEC = DatasetSpec(
    name="universalfakedetect",
    description="UniversalFakeDetect diffusion sets (8 generators, LAION/ImageNet reals)",
    archives=(Archive("diffusion_datasets.zip", URL),),
    expected={"": (*FAKE_SETS, *REAL_POOLS)},
    shared_real={"guided": "imagenet", **{n: "laion" for n in FAKE_SETS if n != "guided"}},
    source=DRIVE_PAGE,
    layout=(
        "  ROOT/<gen>/1_fake/    gen in guided, ldm_200, ldm_200_cfg, ldm_100, glide_100_27, glide_50_27, glide_100_10, dalle\n"
        "  ROOT/laion/0_real/    reals of the LDM, Glide and DALL-E sets\n"
        "  ROOT/imagenet/0_real/ reals of guided\n"
        "  (or, repacked: ROOT/<gen>/{0_real,1_fake})"
    ),
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
