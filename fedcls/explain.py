"""``python -m fedcls.explain RUN_DIR [--images 4] [--sites 0,3]``: Grad-CAM heatmaps of a run's
final global model on a few test images of each site (held-out target sites included), side by
side per site, in RUN_DIR/explain/ (gradcam.png, gradcam.pdf, heatmaps.npz).

    python -m fedcls.explain results/runs/<run>
    python -m fedcls.explain results/runs/<run> --images 6 --sites 0,4

Needs the run's model.pt (save_model=true, the default) and a model with convolutions or patches:
simple_cnn, simple_cnn_bn, resnet18 or vit_tiny. See fedcls.studies.gradcam.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedcls.errors import UserError, exit_code_of


def _sites(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of site ids, e.g. 0,3") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedcls.explain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder (results/runs/<run>)")
    parser.add_argument("--images", type=int, default=4, help="test images per site (default 4)")
    parser.add_argument("--sites", type=_sites, default=None, help="comma list of site ids (default: all)")
    args = parser.parse_args(argv)
    return exit_code_of(lambda: _explain(args))


def _explain(args) -> int:
    from fedcls.studies.gradcam import explain

    if args.images < 1:
        raise UserError(f"--images {args.images}: give at least 1")
    out = explain(args.run.expanduser(), args.images, args.sites)
    print(f"explain: Grad-CAM of {args.run}'s final global model -> {out}/gradcam.png (and .pdf, heatmaps.npz)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
