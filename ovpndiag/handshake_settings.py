"""What the staged handshake needs besides the probe's settings, read and checked.

``handshake_settings()`` turns the user's words (``--ca``, ``--cert``, ``--key``,
``--askpass``, ``--auth-user-pass``, ``--remote-cert-tls``, ``--verify-x509-name``,
``--data-ciphers``, ``--stage`` ..., and a profile's same options) into a
``HandshakeSettings``. Everything is read and checked here, before a packet is
sent, so bad input is one line naming the file and what is wrong with it
(``CredentialError``, a ``KeyFileError``): unreadable or malformed PEM, a key that
does not match its certificate, an encrypted key without its passphrase, a
one-line credentials file. Only what the stage asked for is read: a profile's
``auth-user-pass`` (a prompt) does not stop a ``--stage tls`` check.

Error messages never hold a password, a passphrase or a byte of a private key.
``cryptography`` is imported only when there is a certificate or key to read.
"""

import ipaddress
from pathlib import Path

from .client import STAGES, HandshakeSettings
from .keys import KeyFileError, read_small_file
from .settings import SettingsError

MAX_PEM_SIZE = 1024 * 1024  # a CA bundle of a few hundred certificates; /dev/zero is refused at once
MAX_CREDENTIALS_SIZE = 64 * 1024
DATA_CIPHERS = ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")  # what our data channel speaks
X509_NAME_KINDS = ("subject", "name", "name-prefix")


class CredentialError(KeyFileError):
    """A CA, certificate, key, passphrase or credentials file that cannot be used (one line)."""


def handshake_settings(probe, *, ca=None, cert=None, key=None, askpass=None, auth_user_pass=None,
                       remote_cert_tls=None, verify_x509_name=None, verify_x509_type=None, data_ciphers=None,
                       stage="data", ping_target=None, count=1, keylog=None, write=None, tls_version_max=None,
                       config=None) -> HandshakeSettings:
    """``probe`` is the ProbeSettings (from settings.probe_settings); options given
    here win over the profile's. Raises CredentialError or SettingsError."""
    from .profile import overlay, read_profile

    if stage not in STAGES:
        raise SettingsError(f"--stage must be one of {', '.join(STAGES)}, not '{stage}'")
    profile = read_profile(config) if config else None
    where = profile.where if profile else {}
    if profile is not None and profile.pkcs12 and not (cert or key):
        raise SettingsError(f"{profile.pkcs12}: pkcs12 is not supported; split it into PEM files (openssl pkcs12 "
                            "-in FILE.p12 -nokeys -out client.crt, and -nocerts -nodes -out client.key) and give "
                            "--cert and --key")
    ca_source = _given(ca, profile and profile.ca, where.get("ca"), "--ca")
    cert_source = _given(cert, profile and profile.cert, where.get("cert"), "--cert")
    key_source = _given(key, profile and profile.key, where.get("key"), "--key")
    reaches = STAGES.index(stage)
    settings = HandshakeSettings(probe=probe, stage=stage)
    if reaches >= STAGES.index("tls"):
        if ca_source:
            settings.ca = read_ca(*ca_source)
        if bool(cert_source) != bool(key_source):
            raise SettingsError("--cert and --key go together: a client certificate needs its private key")
        if cert_source:
            password = _askpass(askpass, profile)
            settings.cert, settings.key = read_cert_and_key(cert_source, key_source, password)
            settings.key_password = password
    if reaches >= STAGES.index("auth"):
        settings.auth_user_pass = _credentials(auth_user_pass, profile)
    merged = overlay(profile, remote_cert_tls=remote_cert_tls, tls_version_max=tls_version_max)
    settings.remote_cert_tls = merged.remote_cert_tls
    if settings.remote_cert_tls not in (None, "server"):
        raise SettingsError(f"--remote-cert-tls must be 'server' for a client, not '{settings.remote_cert_tls}'")
    settings.verify_x509_name = _x509_name(verify_x509_name, verify_x509_type, profile)
    settings.data_ciphers = _data_ciphers(data_ciphers, profile)
    settings.compress = profile.compress if profile else None
    settings.fragment = profile.fragment if profile else None
    settings.tls_version_max = merged.tls_version_max
    if settings.tls_version_max not in (None, "1.2", "1.3"):
        raise SettingsError(f"tls-version-max must be 1.2 or 1.3 here, not '{settings.tls_version_max}'")
    if ping_target is not None:
        try:
            settings.ping_target = str(ipaddress.ip_address(ping_target))
        except ValueError:
            raise SettingsError(f"--ping-target must be an IP address, not '{ping_target}'") from None
    if count < 1:
        raise SettingsError("--count must be at least 1")
    if keylog:
        _writable_keylog(keylog)
    settings.count, settings.keylog, settings.write = count, keylog, write
    return settings


def _writable_keylog(path):
    """A key log is appended to (as SSLKEYLOGFILE is): say now, not after the handshake,
    when it cannot be. Opening for append leaves an existing file as it was."""
    import os
    import stat

    try:
        if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
            raise SettingsError(f"--keylog {path}: is not a regular file")
        with open(path, "a"):
            pass
    except OSError as error:
        raise SettingsError(f"--keylog {path}: cannot write: {error.strerror or error}") from None


def _given(option, from_profile, where, name):
    """(source, value): the command line's path, else the profile's path or inline bytes."""
    if option:
        return str(option), Path(option)
    if from_profile is None:
        return None
    if isinstance(from_profile, bytes):
        return where or name, from_profile
    return str(from_profile), from_profile


def _read(source, value, limit, what) -> bytes:
    if isinstance(value, bytes):
        return value
    return read_small_file(value, limit, what, CredentialError)


def read_ca(source, value):
    """The CA's PEM bytes (as given: a path stays a path) after checking it holds certificates."""
    data = _read(source, value, MAX_PEM_SIZE, "CA file")
    certificates = _certificates(data, source, "CA")
    if not certificates:
        raise CredentialError(f"{source}: no certificate found (expected PEM: -----BEGIN CERTIFICATE-----)")
    return _as_given(value, data)


def read_cert_and_key(cert_source, key_source, password):
    """(cert, key) as given after checking that the key opens and matches the certificate."""
    from cryptography.hazmat.primitives import serialization

    cert_name, cert_value = cert_source
    key_name, key_value = key_source
    cert_data = _read(cert_name, cert_value, MAX_PEM_SIZE, "certificate file")
    certificates = _certificates(cert_data, cert_name, "certificate")
    if not certificates:
        raise CredentialError(f"{cert_name}: no certificate found (expected PEM: -----BEGIN CERTIFICATE-----)")
    key_data = _read(key_name, key_value, MAX_PEM_SIZE, "key file")
    private_key = _private_key(key_data, key_name, password)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = private_key.public_key().public_bytes(serialization.Encoding.DER, spki)
    theirs = certificates[0].public_key().public_bytes(serialization.Encoding.DER, spki)
    if ours != theirs:
        raise CredentialError(f"{key_name}: this private key does not match the certificate {cert_name} "
                              "(a key of another certificate?)")
    return _as_given(cert_value, cert_data), _as_given(key_value, key_data)


def _as_given(value, data):
    """A path as a str (the TLS layer loads files itself), inline bytes as bytes."""
    return data if isinstance(value, bytes) else str(value)


def _certificates(data, source, what):
    from cryptography import x509

    if b"-----BEGIN" not in data:
        if data[:1] == b"\x30":
            raise CredentialError(f"{source}: is DER, not PEM: convert it (openssl x509 -inform der -in FILE)")
        raise CredentialError(f"{source}: no PEM {what} found (expected -----BEGIN CERTIFICATE-----)")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise CredentialError(f"{source}: a certificate in it cannot be read ({_short(error)})") from None


def _private_key(data, source, password):
    from cryptography.hazmat.primitives import serialization

    if b"PRIVATE KEY-----" not in data:
        raise CredentialError(f"{source}: no PEM private key found (expected -----BEGIN PRIVATE KEY----- or "
                              "-----BEGIN RSA/EC PRIVATE KEY-----)")
    try:
        return serialization.load_pem_private_key(data, password)
    except TypeError:  # encrypted without a passphrase, or a passphrase for a key that has none
        if password is None:
            raise CredentialError(f"{source}: the private key is encrypted: give its passphrase in a file "
                                  "with --askpass FILE (or 'askpass FILE' in the profile)") from None
        try:
            return serialization.load_pem_private_key(data, None)
        except (TypeError, ValueError) as error:
            raise CredentialError(f"{source}: the private key cannot be read ({_short(error)})") from None
    except ValueError as error:
        if password is not None and b"ENCRYPTED" in data:
            raise CredentialError(f"{source}: the private key does not open with the --askpass passphrase "
                                  "(a wrong passphrase?)") from None
        raise CredentialError(f"{source}: the private key cannot be read ({_short(error)})") from None
    except Exception as error:  # cryptography's UnsupportedAlgorithm and the like
        raise CredentialError(f"{source}: the private key cannot be used ({_short(error)})") from None


def _short(error):
    """The library's reason, on one line and without bytes of the input."""
    text = str(error).split("\n")[0].strip() or type(error).__name__
    return text[:120]


def _askpass(askpass, profile):
    value = askpass or (profile.askpass if profile else None)
    if value is None:
        return None
    if value is True:
        raise SettingsError(f"{profile.where.get('askpass', 'askpass')} without a file asks at a prompt: give "
                            "the passphrase's file (--askpass FILE)")
    data = read_small_file(value, MAX_CREDENTIALS_SIZE, "passphrase file", CredentialError)
    line = data.decode("utf-8", "replace").replace("\r\n", "\n").split("\n", 1)[0]
    if not line:
        raise CredentialError(f"{value}: the passphrase file's first line is empty")
    return line.encode("utf-8")


def _credentials(option, profile):
    """(username, password) as OpenVPN reads them: the username on the first line,
    the password on the second; None when none are given."""
    value = option or (profile.auth_user_pass if profile else None)
    if value is None:
        return None
    if value is True:
        where = profile.source if profile else "the profile"
        raise SettingsError(f"{where}: auth-user-pass without a file asks at a prompt: give the credentials "
                            "file (--auth-user-pass FILE: the username on line 1, the password on line 2)")
    source = (profile.where.get("auth-user-pass") if isinstance(value, bytes) and profile else None) or str(value)
    data = _read(source, value if isinstance(value, bytes) else Path(value), MAX_CREDENTIALS_SIZE,
                 "credentials file")
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    lines = (text[:-1] if text.endswith("\n") else text).split("\n")
    username = lines[0].strip()
    if not username:
        raise CredentialError(f"{source}: no username on the first line (OpenVPN reads the username from line 1 "
                              "and the password from line 2)")
    if len(lines) < 2:
        raise CredentialError(f"{source}: holds one line only: OpenVPN reads the username from line 1 and "
                              "the password from line 2")
    password = lines[1]
    return username, password


def _x509_name(name, kind, profile):
    if not name:
        return profile.verify_x509_name if profile else None
    if kind is None:  # OpenVPN's default is the whole subject; a bare name is almost always a CN
        kind = "subject" if "=" in name else "name"
    if kind not in X509_NAME_KINDS:
        raise SettingsError(f"--verify-x509-type must be one of {', '.join(X509_NAME_KINDS)}, not '{kind}'")
    return name, kind


def _data_ciphers(option, profile):
    """The command line's list must be ours entirely; a profile's may name others (old
    clients keep AES-256-CBC there for old servers): those are left out, as long as one
    we speak remains."""
    if option:
        names, source = option.split(":"), None
    elif profile and profile.data_ciphers:
        names, source = profile.data_ciphers, profile.where.get("data-ciphers", profile.source)
    else:
        return list(DATA_CIPHERS)
    chosen = []
    for name in (n.strip().upper() for n in names if n.strip()):
        if name not in DATA_CIPHERS:
            if source is None:
                raise SettingsError(f"data cipher '{name}' is not one ovpndiag's data channel speaks "
                                    f"({', '.join(DATA_CIPHERS)})")
            continue
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise SettingsError(f"{source or '--data-ciphers'}: names no cipher ovpndiag's data channel speaks "
                            f"({', '.join(DATA_CIPHERS)})")
    return chosen
