"""``python -m fedcls.sweep name=STUDY key=a,b,c ...``: run a grid of simulations as one study.

See fedcls.studies.sweep.
"""

from fedcls.studies.sweep import main

if __name__ == "__main__":
    raise SystemExit(main())
