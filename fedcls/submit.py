"""``python -m fedcls.submit [superlink=NAME] [key=value ...]``: see fedcls.deploy.submit."""

from fedcls.deploy.submit import main

if __name__ == "__main__":
    raise SystemExit(main())
