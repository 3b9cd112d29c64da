"""``python -m fedcls.prepare_sites out=<folder> [format=imagefolder|tensor] [key=value ...]``:

See fedcls.deploy.prepare_sites.
"""

from fedcls.deploy.prepare_sites import main

if __name__ == "__main__":
    raise SystemExit(main())
