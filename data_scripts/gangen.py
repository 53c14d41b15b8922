"""GANGen-Detection: images of 10 GANs unseen in training, ``<gen>/{0_real,1_fake}``.

Examples::

    python data_scripts/gangen.py --root /data/GANGen-Detection --archive ~/Downloads/AttGAN.tar.gz \\
        --archive ~/Downloads/BEGAN.tar.gz ...
    python data_scripts/gangen.py --root /data/GANGen-Detection --url https://mirror.example/AttGAN.tar.gz
    python data_scripts/gangen.py --root /data/GANGen-Detection --validate-only

The publisher shares the data as a Google Drive *folder* of per-generator archives
(``SOURCE``), which a script cannot list without an API key: download the archives from
there (browser, or ``gdown --folder``) and hand them to this script with ``--archive``,
or give direct addresses with ``--url``. The script unpacks, merges and validates.
"""

from __future__ import annotations

import sys

from _fetch import DatasetSpec, main

#: Google Drive folder linked from the GANGen-Detection / NPR project pages.
SOURCE = "https://drive.google.com/drive/folders/11E0Knf9J1qlv2UuTnJSOFUjIIi90czSj"
SETS = ("AttGAN", "BEGAN", "CramerGAN", "InfoMaxGAN", "MMDGAN", "RelGAN", "S3GAN", "SNGAN", "STGAN", "GANimation")

SPEC = DatasetSpec(
    name="gangen",
    description="GANGen-Detection (10 GANs)",
    archives=(),
    expected={"": SETS},
    source=SOURCE,
    layout="  ROOT/<gen>/{0_real,1_fake}/   gen in " + ", ".join(SETS),
    needs_sources=True,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
