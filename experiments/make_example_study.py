"""Regenerate the bundled example study and check it matches the shipped files bit for bit.

    python experiments/make_example_study.py            # check (exit 1 on any difference)
    python experiments/make_example_study.py --write    # overwrite the shipped files
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile

from pkpd_jax._x64 import enable_x64
from pkpd_jax.data.example import EXAMPLE_SEED, example_paths, write_example


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--write", action="store_true", help="overwrite the shipped files")
    ap.add_argument("--seed", type=int, default=EXAMPLE_SEED)
    args = ap.parse_args()
    enable_x64()
    shipped_csv, shipped_json = example_paths()
    if args.write:
        csv, js = write_example(shipped_csv.parent, seed=args.seed)
        print(f"wrote {csv} and {js}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        csv, js = write_example(tmp, seed=args.seed)
        same = [filecmp.cmp(a, b, shallow=False) for a, b in ((csv, shipped_csv), (js, shipped_json))]
    for name, ok in zip(("study.csv", "truth.json"), same):
        print(f"{name}: {'identical' if ok else 'DIFFERS'}")
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
