"""The rehearsal certificates: a server certificate signed by the CA for the named hosts, and
SuperNode keys in the formats Flower's SuperNode and `flwr supernode register` read."""

import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcls.deploy.certs import main, make_certificates


def test_the_server_certificate_is_signed_by_the_ca_for_every_host(tmp_path):
    make_certificates(tmp_path, 2, ["link.example.org", "10.0.0.5"])
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)  # raises unless the CA signed it
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["link.example.org"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key((tmp_path / "server.key").read_bytes(), None)
    assert key.public_key() == server.public_key()
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0  # private keys: owner only


def test_supernode_keys_pair_up_in_openssh_format(tmp_path):
    make_certificates(tmp_path, 2, ["localhost"])
    for k in range(2):
        private = serialization.load_ssh_private_key((tmp_path / f"site-{k}").read_bytes(), None)
        public = serialization.load_ssh_public_key((tmp_path / f"site-{k}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.public_key() == public
    assert not (tmp_path / "site-2").exists()


def test_bad_arguments_exit_2_with_the_fix(tmp_path, capsys):
    assert main(["sites=3"]) == 2
    assert "out=<folder>" in capsys.readouterr().err
    assert main([f"out={tmp_path}", "sites=three"]) == 2
    assert main([f"out={tmp_path}", "colour=blue"]) == 2
    assert "unknown argument colour" in capsys.readouterr().err
