"""``python -m fedcls.certs out=<folder> [sites=3] [hosts=localhost,127.0.0.1]``: a self-signed

See fedcls.deploy.certs.
"""

from fedcls.deploy.certs import main

if __name__ == "__main__":
    raise SystemExit(main())
