"""The write-up's five fine-tuning configurations on real FER2013, side by side.

`fer compare` run in a work clone of the project (`bench/real_pipeline.py`'s
`make_work_clone`) whose params.yaml reads FER2013 (dvc-added under
data/raw/): each configuration (`fer_tasks/overlays/*.yaml`) is a DVC
experiment overlaid on `params.yaml` (Lite0 at the write-up's 48 px, balanced
class weights), its epochs scaled by `--epochs-scale`. PublicTest is the
validation split and the score (the phases' val metrics); `test` is carved from
Training. `fer compare`'s report (`comparison.{md,csv}`, `curves.png`) is copied
to --out-dir.

    .venv/bin/python bench/real_configs.py [--epochs-scale 0.2] [--only EFN_base ...]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_pipeline import DEFAULT_CSV, ROOT, make_work_clone, work_env  # noqa: E402

from fer_tasks.lib import overlay  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--epochs-scale", type=float, default=0.2)
    ap.add_argument("--only", nargs="+", choices=overlay.available(), help="a subset to run")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fer_real_configs"))
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results" / "real_configs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = args.work.resolve()
    make_work_clone(work, None, args.csv.resolve())
    cmd = [sys.executable, "-m", "fer_tasks", "compare", "--epochs-scale", str(args.epochs_scale)]
    cmd += ["--configs", *args.only] if args.only else []
    subprocess.run(cmd, cwd=work, env=work_env(work), check=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("comparison.md", "comparison.csv", "curves.png"):
        shutil.copyfile(work / "reports" / "compare" / name, args.out_dir / name)
    print((args.out_dir / "comparison.md").read_text())
    print(f"written: {args.out_dir}")


if __name__ == "__main__":
    main()
