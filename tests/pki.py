"""Test certificates made at test time with `cryptography`: a CA and the server
and client certificates each failure scenario needs. Throwaway material for
loopback tests only - never reuse it for anything real.

``get_pki()`` builds everything once per test process into a temporary
directory and returns a ``PKI`` whose attributes are file paths (str):

    ca, ca_key                      the CA the servers and our client trust
    other_ca, other_ca_key          a second CA nobody trusts
    crl                             the CA's CRL, revoking ``client_revoked``
    server[NAME], server_key[NAME]  server certificates (all CN "server" unless said):
        valid         serverAuth EKU, valid for a year
        expired       ended yesterday
        not-yet-valid starts tomorrow
        ends-5d       ends in 5 days (within --cert-critical 7)
        ends-20d      ends in 20 days (within --cert-warning 30, outside critical)
        no-eku        no extended key usage at all (fails remote-cert-tls server)
        client-eku    clientAuth EKU only (OpenSSL's purpose check refuses it even
                      without remote-cert-tls: "unsuitable certificate purpose")
        other-cn      CN "other-server" (fails verify-x509-name server)
        other-ca      signed by other_ca (untrusted by our client)
    client[NAME], client_key[NAME]
        valid         CN "client", clientAuth EKU
        other-ca      signed by other_ca (the server rejects it)
        revoked       CN "revoked-client", listed in ``crl``

Keys are EC P-256: fast to make and accepted by OpenVPN with ``--dh none``.
"""

import atexit
import datetime
import functools
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

DAY = datetime.timedelta(days=1)


@dataclass
class PKI:
    directory: Path
    ca: str = ""
    ca_key: str = ""
    other_ca: str = ""
    other_ca_key: str = ""
    crl: str = ""
    server: dict = field(default_factory=dict)
    server_key: dict = field(default_factory=dict)
    client: dict = field(default_factory=dict)
    client_key: dict = field(default_factory=dict)
    # the not_after of each server certificate, to check days_left against
    server_not_after: dict = field(default_factory=dict)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _name(cn):
    from cryptography.x509.oid import NameOID
    from cryptography import x509

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ovpndiag throwaway test PKI"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _key()
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY).not_valid_after(now + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(ca_cert, ca_key, cn, eku, not_before, not_after):
    """``eku``: a list of ExtendedKeyUsageOID values, or None for no EKU extension."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _key()
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=True,
                                            key_cert_sign=False, crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(directory, stem, cert, key):
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def make_pki(directory) -> PKI:
    """Writes the whole test PKI into ``directory`` (which must exist)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    directory = Path(directory)
    pki = PKI(directory)
    now = _now()
    ca_cert, ca_key = _ca("ovpndiag throwaway test CA")
    other_cert, other_key = _ca("ovpndiag throwaway untrusted CA")
    pki.ca, pki.ca_key = _write(directory, "ca", ca_cert, ca_key)
    pki.other_ca, pki.other_ca_key = _write(directory, "other-ca", other_cert, other_key)

    server_auth, client_auth = [ExtendedKeyUsageOID.SERVER_AUTH], [ExtendedKeyUsageOID.CLIENT_AUTH]
    servers = {  # name: (issuer, CN, EKU, not_before, not_after)
        "valid": (ca_cert, ca_key, "server", server_auth, now - DAY, now + 365 * DAY),
        "expired": (ca_cert, ca_key, "server", server_auth, now - 30 * DAY, now - DAY),
        "not-yet-valid": (ca_cert, ca_key, "server", server_auth, now + DAY, now + 365 * DAY),
        # +1 h so that "days left" rounds the same way whenever the test runs
        "ends-5d": (ca_cert, ca_key, "server", server_auth, now - DAY, now + 5 * DAY + datetime.timedelta(hours=1)),
        "ends-20d": (ca_cert, ca_key, "server", server_auth, now - DAY, now + 20 * DAY + datetime.timedelta(hours=1)),
        "no-eku": (ca_cert, ca_key, "server", None, now - DAY, now + 365 * DAY),
        "client-eku": (ca_cert, ca_key, "server", client_auth, now - DAY, now + 365 * DAY),
        "other-cn": (ca_cert, ca_key, "other-server", server_auth, now - DAY, now + 365 * DAY),
        "other-ca": (other_cert, other_key, "server", server_auth, now - DAY, now + 365 * DAY),
    }
    for name, (issuer, issuer_key, cn, eku, start, end) in servers.items():
        cert, key = _leaf(issuer, issuer_key, cn, eku, start, end)
        pki.server[name], pki.server_key[name] = _write(directory, f"server-{name}", cert, key)
        pki.server_not_after[name] = end

    clients = {
        "valid": (ca_cert, ca_key, "client"),
        "other-ca": (other_cert, other_key, "client"),
        "revoked": (ca_cert, ca_key, "revoked-client"),
    }
    revoked_serial = None
    for name, (issuer, issuer_key, cn) in clients.items():
        cert, key = _leaf(issuer, issuer_key, cn, client_auth, now - DAY, now + 365 * DAY)
        pki.client[name], pki.client_key[name] = _write(directory, f"client-{name}", cert, key)
        if name == "revoked":
            revoked_serial = cert.serial_number

    revoked = (x509.RevokedCertificateBuilder().serial_number(revoked_serial)
               .revocation_date(now - DAY).build())
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
           .last_update(now - DAY).next_update(now + 30 * DAY)
           .add_revoked_certificate(revoked)
           .sign(ca_key, hashes.SHA256()))
    crl_path = directory / "crl.pem"
    crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    pki.crl = str(crl_path)
    return pki


@functools.lru_cache(maxsize=None)
def get_pki() -> PKI:
    """The test PKI, made once per process in a temporary directory removed at exit."""
    directory = Path(tempfile.mkdtemp(prefix="ovpndiag-pki-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return make_pki(directory)

