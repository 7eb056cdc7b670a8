"""TLS over memory BIOs for the control channel, verified the way OpenVPN does.

``TLSClient`` runs OpenSSL (through pyOpenSSL) without a socket: ``outgoing()``
gives the bytes to put in control packets, ``feed()`` takes the bytes that came
out of them, ``records()`` the application data. pyOpenSSL, not the standard
library's ``ssl``: OpenVPN 2.6 takes the data-channel keys from the TLS exporter
(RFC 5705, ``export_keying_material``), which ``ssl`` does not offer, and
pyOpenSSL also gives the peer's whole chain and each verification error with its
depth, a key-log callback (no file of secrets unless asked) and the alerts.

Verification as OpenVPN does it: the chain against ``--ca`` with OpenSSL's
checks (trust and validity), no host name; ``--remote-cert-tls server`` (the
serverAuth EKU and a key usage extension, at depth 0); ``--verify-x509-name``
(subject, CN, or CN prefix). Without a CA the server is accepted and reported as
not verified. Private keys and passwords never leave this module's objects.
"""

import datetime
import math
from pathlib import Path
from typing import List, Optional

from ..certificates import key_description, validity
from . import CredentialsError

# TLS alert descriptions (RFC 8446 6, and the TLS 1.2 ones still seen)
ALERTS = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 21: "decryption_failed",
    22: "record_overflow", 30: "decompression_failure", 40: "handshake_failure", 41: "no_certificate",
    42: "bad_certificate", 43: "unsupported_certificate", 44: "certificate_revoked",
    45: "certificate_expired", 46: "certificate_unknown", 47: "illegal_parameter", 48: "unknown_ca",
    49: "access_denied", 50: "decode_error", 51: "decrypt_error", 60: "export_restriction",
    70: "protocol_version", 71: "insufficient_security", 80: "internal_error",
    86: "inappropriate_fallback", 90: "user_canceled", 100: "no_renegotiation", 109: "missing_extension",
    110: "unsupported_extension", 112: "unrecognized_name", 113: "bad_certificate_status_response",
    115: "unknown_psk_identity", 116: "certificate_required", 120: "no_application_protocol",
}
# The alerts that mean "your certificate": received after our certificate went out.
CERTIFICATE_ALERTS = {"bad_certificate", "unsupported_certificate", "certificate_revoked",
                      "certificate_expired", "certificate_unknown", "unknown_ca", "certificate_required",
                      "access_denied"}
HELLO_ALERTS = {"protocol_version", "handshake_failure", "insufficient_security", "illegal_parameter"}

SERVER_AUTH_OID = "1.3.6.1.5.5.7.3.1"
X509_NAME_KINDS = ("subject", "name", "name-prefix")
_MAX_PEM = 1024 * 1024
_SHORT_NAMES = {"2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O",
                "2.5.4.11": "OU", "1.2.840.113549.1.9.1": "emailAddress", "2.5.4.5": "serialNumber",
                "0.9.2342.19200300.100.1.25": "DC", "0.9.2342.19200300.100.1.1": "UID", "2.5.4.4": "SN",
                "2.5.4.42": "GN", "2.5.4.12": "title", "2.5.4.41": "name", "2.5.4.46": "dnQualifier"}


class TLSFailure(Exception):
    """TLS stopped; ``kind`` says who refused what, ``alerts`` what was said."""

    def __init__(self, message, kind="tls-error", alerts=()):
        super().__init__(message)
        self.kind = kind  # "server-certificate-rejected", "alert-received", "tls-error"
        self.alerts = list(alerts)


def _read_pem(value, what) -> bytes:
    """A path or PEM bytes -> bytes; one-line CredentialsError otherwise."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    path = Path(value)
    try:
        if path.stat().st_size > _MAX_PEM:
            raise CredentialsError(f"{path}: too big for a {what} ({path.stat().st_size} bytes)")
        return path.read_bytes()
    except CredentialsError:
        raise
    except OSError as error:
        raise CredentialsError(f"{path}: cannot read the {what}: {error.strerror or error}") from None


def _source(value, what):
    return f"the inline {what}" if isinstance(value, (bytes, bytearray)) else str(value)


def load_certificates(value, what="CA certificate") -> list:
    """Every certificate in a PEM file or block (cryptography objects)."""
    from cryptography import x509

    data = _read_pem(value, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise CredentialsError(f"{_source(value, what)}: no PEM certificate in it ({what})")
    return certificates


def load_private_key(value, password: Optional[bytes]):
    from cryptography.hazmat.primitives import serialization

    data = _read_pem(value, "private key")
    source = _source(value, "key")
    if b"ENCRYPTED" in data and not password:
        raise CredentialsError(f"{source}: the private key is encrypted; give its passphrase (--askpass FILE)")
    try:
        return serialization.load_pem_private_key(data, password=password or None)
    except TypeError:  # a password for a key that has none: use it without
        try:
            return serialization.load_pem_private_key(data, password=None)
        except Exception:
            raise CredentialsError(f"{source}: not a readable PEM private key") from None
    except ValueError as error:
        if "password" in str(error).lower() or "decrypt" in str(error).lower():
            raise CredentialsError(f"{source}: wrong passphrase for the private key") from None
        raise CredentialsError(f"{source}: not a readable PEM private key") from None
    except Exception:
        raise CredentialsError(f"{source}: not a readable PEM private key") from None


def openvpn_subject(name) -> str:
    """A name as OpenVPN prints and matches it: "O=Org, CN=server" (certificate order)."""
    parts = []
    for attribute in name:
        short = _SHORT_NAMES.get(attribute.oid.dotted_string, attribute.oid.dotted_string)
        parts.append(f"{short}={attribute.value}")
    return ", ".join(parts)


def common_name(certificate) -> Optional[str]:
    from cryptography.x509.oid import NameOID

    values = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return values[-1].value if values else None


def certificate_facts(certificate, now=None) -> dict:
    """What a report says of one certificate (no key material: the public key's kind and size)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = validity(certificate)
    try:
        signature = certificate.signature_algorithm_oid._name
    except Exception:
        signature = certificate.signature_algorithm_oid.dotted_string
    try:
        key = key_description(certificate.public_key())
    except Exception:
        key = "unknown"
    return {
        "subject": openvpn_subject(certificate.subject),
        "issuer": openvpn_subject(certificate.issuer),
        "serial": format(certificate.serial_number, "x"),
        "not_before": not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "days_left": math.floor((not_after - now).total_seconds() / 86400),
        "not_yet_valid": now < not_before,
        "key": key,
        "signature_algorithm": signature,
    }


class TLSClient:
    """One TLS client session over memory BIOs."""

    def __init__(self, ca=None, cert=None, key=None, key_password=None, remote_cert_tls=None,
                 verify_x509_name=None, keylog=None, tls_version_max=None, permissive=False):
        """``permissive``: the widest ClientHello this OpenSSL can make (TLS 1.0-1.3, every
        cipher suite and group, @SECLEVEL=0) and a client that refuses every server
        certificate, so the handshake ends with our alert right after the server's first
        flight: to ask a server that ignored our ClientHello whether it answers any."""
        from OpenSSL import SSL, crypto

        self._SSL = SSL
        if remote_cert_tls not in (None, "server"):
            raise CredentialsError(f"--remote-cert-tls must be 'server', not '{remote_cert_tls}'")
        if verify_x509_name and verify_x509_name[1] not in X509_NAME_KINDS:
            raise CredentialsError(f"--verify-x509-name type must be one of {', '.join(X509_NAME_KINDS)}, "
                                   f"not '{verify_x509_name[1]}'")
        if (cert is None) != (key is None):
            raise CredentialsError("--cert and --key go together: give both (or neither)")
        self.remote_cert_tls, self.verify_x509_name = remote_cert_tls, verify_x509_name
        self.ca_given = ca is not None
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)  # OpenVPN 2.6's default tls-version-min
        if tls_version_max:
            versions = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
            if tls_version_max not in versions:
                raise CredentialsError(f"TLS version must be 1.2 or 1.3, not '{tls_version_max}'")
            context.set_max_proto_version(versions[tls_version_max])
        context.set_options(SSL.OP_NO_TICKET)
        _set_groups(context, ALL_GROUPS if permissive else CLASSIC_GROUPS)
        if permissive:
            _widest_offer(context)
        if ca is not None:
            store = context.get_cert_store()
            for certificate in load_certificates(ca):
                store.add_cert(crypto.X509.from_cryptography(certificate))
        if cert is not None:
            chain = load_certificates(cert, "client certificate")
            private_key = load_private_key(key, key_password)
            _give(context.use_certificate, chain[0], crypto.X509.from_cryptography)
            for extra in chain[1:]:
                _give(context.add_extra_chain_cert, extra, crypto.X509.from_cryptography)
            try:
                _give(context.use_privatekey, private_key, crypto.PKey.from_cryptography_key)
                context.check_privatekey()
            except SSL.Error:
                raise CredentialsError(f"{_source(key, 'key')}: the private key does not match the certificate "
                                       f"{_source(cert, 'certificate')}") from None
        self.verify_errors: List[dict] = []  # {depth, error, subject}
        self.name_problem: Optional[str] = None  # remote-cert-tls / verify-x509-name
        context.set_verify(SSL.VERIFY_PEER, (lambda *args: False) if permissive else self._verify)
        self.alerts: List[dict] = []  # {"direction": "sent"|"received", "level", "description"}
        context.set_info_callback(self._info)
        self.keylog_lines: List[bytes] = []
        if keylog:
            self._keylog_path = Path(keylog)
            context.set_keylog_callback(lambda connection, line: self._keylog(line))
        self.connection = SSL.Connection(context, None)
        self.connection.set_connect_state()
        self.handshake_done = False
        self._certificate_facts = None

    # --- callbacks --------------------------------------------------------------------

    def _verify(self, connection, certificate, errno, depth, ok):
        if not ok:
            self.verify_errors.append({"depth": depth, "errno": errno,
                                       "error": _verify_error_string(errno),
                                       "subject": openvpn_subject(certificate.to_cryptography().subject)})
            if not self.ca_given:
                return True  # no CA: accept, report as not verified
            return False
        if depth == 0:
            problem = self._depth0_checks(certificate.to_cryptography())
            if problem:
                self.name_problem = problem
                return False
        return True

    def _depth0_checks(self, certificate) -> Optional[str]:
        from cryptography import x509

        if self.remote_cert_tls == "server":
            try:
                eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
                purposes = [oid.dotted_string for oid in eku]
            except x509.ExtensionNotFound:
                purposes = None
            if purposes is None or SERVER_AUTH_OID not in purposes:
                return ("remote-cert-tls server: the server certificate has no TLS Web Server Authentication "
                        "extended key usage" + (" (no EKU at all)" if purposes is None else ""))
            try:
                certificate.extensions.get_extension_for_class(x509.KeyUsage)
            except x509.ExtensionNotFound:
                return "remote-cert-tls server: the server certificate has no key usage extension"
        if self.verify_x509_name:
            name, kind = self.verify_x509_name
            subject, cn = openvpn_subject(certificate.subject), common_name(certificate)
            if kind == "subject" and subject != name:
                return f"verify-x509-name: the subject is '{subject}', not '{name}'"
            if kind == "name" and cn != name:
                return f"verify-x509-name: the CN is '{cn}', not '{name}'"
            if kind == "name-prefix" and not (cn or "").startswith(name):
                return f"verify-x509-name: the CN '{cn}' does not start with '{name}'"
        return None

    def _info(self, connection, where, ret):
        SSL = self._SSL
        if where & SSL.SSL_CB_ALERT:
            self.alerts.append({"direction": "received" if where & SSL.SSL_CB_READ else "sent",
                                "level": "fatal" if ret >> 8 == 2 else "warning",
                                "description": ALERTS.get(ret & 0xFF, f"alert {ret & 0xFF}")})

    def _keylog(self, line: bytes):
        try:
            with open(self._keylog_path, "ab") as file:
                file.write(line + b"\n")
        except OSError:
            pass  # the CLI checks the file can be written before the handshake

    # --- moving bytes -------------------------------------------------------------------

    def handshake(self):
        """Advance the handshake with what was fed; raises TLSFailure."""
        if self.handshake_done:
            return
        SSL = self._SSL
        try:
            self.connection.do_handshake()
            self.handshake_done = True
        except (SSL.WantReadError, SSL.WantWriteError):
            pass
        except SSL.Error as error:
            raise self._failure(error) from None

    def outgoing(self) -> bytes:
        SSL = self._SSL
        chunks = []
        while True:
            try:
                chunk = self.connection.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def feed(self, data: bytes):
        if data:
            self.connection.bio_write(data)

    def records(self) -> List[bytes]:
        """Application data received, one entry per TLS record (OpenVPN's
        messages are cut at record boundaries)."""
        SSL = self._SSL
        out = []
        while True:
            try:
                chunk = self.connection.recv(65536)
            except (SSL.WantReadError, SSL.WantWriteError):
                break
            except SSL.ZeroReturnError:
                raise TLSFailure("the server closed TLS (close_notify)", "tls-error", self.alerts) from None
            except SSL.Error as error:
                raise self._failure(error) from None
            if not chunk:
                break
            out.append(chunk)
        return out

    def send(self, data: bytes):
        self.connection.sendall(data)

    def _failure(self, error) -> TLSFailure:
        reasons = [r[2] for r in (error.args[0] if error.args and isinstance(error.args[0], list) else [])
                   if isinstance(r, tuple) and len(r) == 3]
        text = "; ".join(reasons) or str(error) or "TLS error"
        if self.name_problem:
            return TLSFailure(self.name_problem, "server-certificate-rejected", self.alerts)
        if self.verify_errors and self.ca_given:
            first = self.verify_errors[0]
            return TLSFailure(f"server certificate verify failed: {first['error']} (depth {first['depth']}, "
                              f"{first['subject']})", "server-certificate-rejected", self.alerts)
        received = [a for a in self.alerts if a["direction"] == "received"]
        if received:
            return TLSFailure(f"the server sent a TLS alert: {received[-1]['description']}", "alert-received",
                              self.alerts)
        return TLSFailure(f"TLS error: {text}", "tls-error", self.alerts)

    # --- what was agreed ------------------------------------------------------------------

    def tls_facts(self) -> dict:
        return {"version": self.connection.get_protocol_version_name(),
                "cipher": self.connection.get_cipher_name()}

    def server_chain(self) -> list:
        chain = self.connection.get_peer_cert_chain() or []
        return [c.to_cryptography() for c in chain]

    def server_certificate(self) -> Optional[dict]:
        """Facts about the server's certificate and chain, and whether it was verified
        (kept once the handshake is done: they cannot change then)."""
        if self._certificate_facts is not None:
            return self._certificate_facts
        facts = self._server_certificate()
        if self.handshake_done:
            self._certificate_facts = facts
        return facts

    def _server_certificate(self) -> Optional[dict]:
        chain = self.server_chain()
        if not chain:
            return None
        facts = certificate_facts(chain[0])
        facts["chain"] = [{"subject": f["subject"], "issuer": f["issuer"], "not_after": f["not_after"]}
                          for f in (certificate_facts(c) for c in chain)]
        facts["verified"] = self.ca_given and not self.verify_errors and not self.name_problem
        if self.verify_errors:
            facts["verify_errors"] = [f"depth {e['depth']}: {e['error']}" for e in self.verify_errors]
        if not self.ca_given:
            facts["verify_errors"] = ["not verified: no CA given (--ca)"] + facts.get("verify_errors", [])
        if self.name_problem:
            facts["name_problem"] = self.name_problem
        return facts

    def export(self, label: str, length: int) -> Optional[bytes]:
        if not self.handshake_done:
            return None
        try:
            return self.connection.export_keying_material(label.encode(), length, None)
        except Exception:
            return None


# OpenSSL 3.0's default key-exchange groups, as an OpenVPN 2.6 client on it offers them.
# The OpenSSL bundled with recent pyOpenSSL adds a post-quantum hybrid key share of
# 1.2 KB, which makes our ClientHello two control packets instead of one.
CLASSIC_GROUPS = b"X25519:P-256:X448:P-521:P-384"
# Every group, but a key share for X25519 only ("*"), so the ClientHello stays one packet
# (a server that wants another group asks for it: HelloRetryRequest). A name this
# OpenSSL does not know makes the whole list fail: then the classic one.
ALL_GROUPS = (b"*X25519:P-256:X448:P-521:P-384:ffdhe2048:ffdhe3072:ffdhe4096:ffdhe6144:ffdhe8192:"
              b"X25519MLKEM768:SecP256r1MLKEM768:SecP384r1MLKEM1024:brainpoolP256r1:brainpoolP384r1:"
              b"brainpoolP512r1")
ALL_TLS13_SUITES = (b"TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:"
                    b"TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256")


def _set_groups(context, groups):
    try:  # pyOpenSSL has no call for it: its OpenSSL binding (private, so guarded)
        from OpenSSL._util import lib

        if lib.SSL_CTX_set1_curves_list(context._context, groups) != 1 and groups != CLASSIC_GROUPS:
            lib.SSL_CTX_set1_curves_list(context._context, CLASSIC_GROUPS)
    except Exception:
        pass  # OpenSSL's own defaults then: only a bigger ClientHello


def _widest_offer(context):
    """TLS 1.0 up (OpenSSL refuses 1.0/1.1 above security level 0), every TLS 1.2 suite
    including the NULL and anonymous ones, every TLS 1.3 suite."""
    from OpenSSL import SSL

    context.set_min_proto_version(0)  # the lowest this OpenSSL was built with
    context.set_max_proto_version(0)  # and the highest
    context.set_cipher_list(b"ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    try:
        context.set_tls13_ciphersuites(ALL_TLS13_SUITES)
    except (AttributeError, SSL.Error):
        pass  # older pyOpenSSL: OpenSSL's default three


def _give(method, value, convert):
    """pyOpenSSL >= 24.3 takes cryptography's objects (and deprecates its own); older ones need theirs."""
    try:
        return method(value)
    except TypeError:
        return method(convert(value))


# OpenSSL's texts for the usual ones, in case its own function cannot be reached
_VERIFY_ERRORS = {2: "unable to get issuer certificate", 9: "certificate is not yet valid",
                  10: "certificate has expired", 18: "self-signed certificate",
                  19: "self-signed certificate in certificate chain", 20: "unable to get local issuer certificate",
                  21: "unable to verify the first certificate", 23: "certificate revoked",
                  24: "invalid CA certificate", 26: "unsupported certificate purpose"}


def _verify_error_string(errno) -> str:
    try:  # pyOpenSSL's binding to OpenSSL (private, so guarded)
        from OpenSSL._util import ffi, lib

        return ffi.string(lib.X509_verify_cert_error_string(errno)).decode()
    except Exception:
        return _VERIFY_ERRORS.get(errno, f"X509 verify error {errno}")


def exporter_available() -> bool:
    try:
        from OpenSSL import SSL

        return hasattr(SSL.Connection, "export_keying_material")
    except ImportError:
        return False
