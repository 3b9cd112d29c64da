"""``python -m fedcls.certs out=<folder> [sites=3] [hosts=localhost,127.0.0.1]``: a self-signed
CA, a SuperLink TLS certificate and one authentication key pair per SuperNode, for rehearsing a
secure deployment. Real deployments use certificates from their organisation's CA.

Writes ``ca.crt``/``ca.key`` (the CA), ``server.pem``/``server.key`` (the SuperLink's certificate,
valid for every name in ``hosts``), and ``site-<k>``/``site-<k>.pub`` (SuperNode k's EC key pair in
OpenSSH format, as ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode
register`` read them). By hand with ``cryptography`` (a Flower dependency) rather than Flower's
example openssl script, so it runs wherever fedcls runs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedcls.errors import UserError, run_cli

VALID_DAYS = 365


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcls rehearsal"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _certificate(subject, issuer, public_key, signing_key, ca: bool, hosts: list[str] = ()):
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _write_pem(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def make_certificates(out: Path, sites: int, hosts: list[str]) -> list[Path]:
    """Write the CA, the SuperLink certificate and `sites` SuperNode key pairs; returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    pem, none = serialization.Encoding.PEM, serialization.NoEncryption()
    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_cert = _certificate(_name("fedcls rehearsal CA"), _name("fedcls rehearsal CA"), ca_key.public_key(), ca_key, True)
    server_cert = _certificate(_name(hosts[0]), ca_cert.subject, server_key.public_key(), ca_key, False, hosts)
    traditional = serialization.PrivateFormat.TraditionalOpenSSL
    _write_pem(out / "ca.key", ca_key.private_bytes(pem, traditional, none), private=True)
    _write_pem(out / "ca.crt", ca_cert.public_bytes(pem))
    _write_pem(out / "server.key", server_key.private_bytes(pem, traditional, none), private=True)
    _write_pem(out / "server.pem", server_cert.public_bytes(pem))
    for k in range(sites):
        key = ec.generate_private_key(ec.SECP384R1())
        _write_pem(out / f"site-{k}", key.private_bytes(pem, serialization.PrivateFormat.OpenSSH, none), private=True)
        _write_pem(out / f"site-{k}.pub", key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return sorted(out.iterdir())


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, __doc__)


def _main(args: list[str]) -> int:
    opts = dict(a.split("=", 1) for a in args if "=" in a)
    if unknown := sorted(set(opts) - {"out", "sites", "hosts"}) or [a for a in args if "=" not in a]:
        raise UserError(f"unknown argument {unknown[0]}; use out=<folder> sites=<n> hosts=<name,ip,...>")
    if "out" not in opts:
        raise UserError("name the folder to write: out=<folder> (e.g. out=certs)")
    sites = opts.get("sites", "3")
    if not sites.isdigit():
        raise UserError(f"sites={sites} is not a whole number of SuperNodes")
    hosts = [h for h in opts.get("hosts", "localhost,127.0.0.1").split(",") if h]
    files = make_certificates(Path(opts["out"]).expanduser(), int(sites), hosts)
    print(f"wrote {len(files)} files under {opts['out']} (CA, SuperLink certificate for {', '.join(hosts)}, "
          f"{sites} SuperNode key pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
