"""DiffusionForensics (DIRE, Wang et al. ICCV 2023) test sets, ``<gen>/{0_real,1_fake}``.

Examples::

    python data_scripts/diffusionforensics.py --root /data/DiffusionForensics \\
        --archive ~/Downloads/adm.tar.gz --archive ~/Downloads/ddpm.tar.gz ...
    python data_scripts/diffusionforensics.py --root /data/DiffusionForensics --validate-only

The publisher shares the data as a Google Drive *folder* (``SOURCE``) of archives; a
script cannot list it without an API key. Download the archives (browser, or
``gdown --folder``), then pass them with ``--archive`` (or direct addresses with
``--url``). Archives in the ``<gen>/{0_real,1_fake}`` layout (the form used by the
cross-generator benchmarks) unpack straight into place.
"""

from __future__ import annotations

import sys

from _fetch import DatasetSpec, main

#: Google Drive folder linked from the DIRE project page.
SOURCE = "https://drive.google.com/drive/folders/1tKsOU-6FDdstrrKLPYuZ7RpQwtOSHxUD"
SETS = ("adm", "ddpm", "iddpm", "ldm", "pndm", "sdv1_new", "sdv2", "vqdiffusion")

SPEC = DatasetSpec(
    name="diffusionforensics",
    description="DiffusionForensics (8 diffusion models)",
    archives=(),
    expected={"": SETS},
    source=SOURCE,
    layout="  ROOT/<gen>/{0_real,1_fake}/   gen in " + ", ".join(SETS),
    needs_sources=True,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
