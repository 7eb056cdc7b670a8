"""What to probe and how: command-line options merged over a .ovpn profile.

``probe_settings()`` is the one place that turns the user's words (host, port,
proto, key files, key-direction, digest, profile) into ``ProbeSettings``; the
CLI, the check and the check_openvpn compatibility script all go through it.
"""

import math
from dataclasses import dataclass, field
from typing import Optional

from .keys import KeyFileError, TLSCryptV2ClientKey, TLSCryptV2ServerKey
from .protocol import digest_name
from .profile import control_keys, overlay, read_profile

DEFAULT_PORT = 1194
MAX_SECONDS = 86400  # a day: more is a typo, and sockets refuse some of the larger values


class SettingsError(ValueError):
    """Options that cannot work together; the message says which and why."""


@dataclass
class ProbeSettings:
    host: str
    port: int = DEFAULT_PORT
    proto: str = "udp"
    family: Optional[int] = None  # 4 or 6; None: every resolved address in order
    timeout: float = 10.0  # the whole budget, seconds
    retries: int = 2  # extra UDP attempts
    retry_interval: float = 2.0
    wrapper: object = field(default=None)  # a wrap.* wrapper, seen from the client
    validate: bool = True
    max_skew: float = 300.0  # seconds the server's net time may differ from ours

    def __post_init__(self):
        if self.wrapper is None:
            from .wrap import NoWrapping

            self.wrapper = NoWrapping()

    @property
    def wrapping_name(self):
        return describe_wrapper(self.wrapper)


def describe_wrapper(wrapper) -> str:
    """e.g. "tls-auth SHA256, key-direction 1" - what the user configured."""
    kind = wrapper.wrapping.kind
    if kind == "tls-auth":
        direction = "bidirectional" if wrapper.direction is None else f"key-direction {wrapper.direction}"
        return f"tls-auth {wrapper.digest}, {direction}"
    return kind if kind != "none" else "no tls-auth/tls-crypt"


_PROFILE_PROTOS = {
    "udp": ("udp", None), "udp4": ("udp", 4), "udp6": ("udp", 6),
    "tcp": ("tcp", None), "tcp4": ("tcp", 4), "tcp6": ("tcp", 6),
    "tcp-client": ("tcp", None), "tcp4-client": ("tcp", 4), "tcp6-client": ("tcp", 6),
}


def probe_settings(host=None, port=None, proto=None, family=None, timeout=10.0, retries=2,
                   retry_interval=2.0, tls_auth=None, key_direction="1", auth=None, tls_crypt=None,
                   tls_crypt_v2=None, config=None, validate=True) -> ProbeSettings:
    """Options given on the command line win over the profile's.

    ``key_direction`` is "0", "1", "none" or None (not given: the profile's, else 1).
    Raises SettingsError or KeyFileError with a one-line message."""
    profile = read_profile(config) if config else None
    if profile:
        if profile.secret:
            raise SettingsError(f"{profile.secret}: 'secret' is static-key mode: it has no TLS handshake, so "
                                "no reset for a server to answer - there is nothing to probe")
        remote = _remote_for(host, profile.remotes)
        if remote is not None:
            host = host or remote.host
            port = port or remote.port
            proto = proto or remote.proto
    merged = overlay(profile, port=port, proto=proto, auth=auth, key_direction=key_direction)
    port, proto, auth, key_direction = merged.port, merged.proto, merged.auth, merged.key_direction
    if not host:
        raise SettingsError("no host given (and no 'remote' in a --config profile)")

    proto_family = None
    if proto is not None:
        if proto.lower() not in _PROFILE_PROTOS:
            raise SettingsError(f"unknown proto '{proto}' (use udp or tcp)")
        proto, proto_family = _PROFILE_PROTOS[proto.lower()]
    family = family or proto_family

    wrapper = _wrapper(tls_auth, key_direction, auth, tls_crypt, tls_crypt_v2, profile)
    if not _seconds(timeout):
        raise SettingsError(f"--timeout must be a number of seconds more than 0 and at most {MAX_SECONDS}, "
                            f"not {timeout}")
    if retries < 0 or not _seconds(retry_interval):
        raise SettingsError(f"--retries must be 0 or more and --retry-interval a number of seconds more "
                            f"than 0 and at most {MAX_SECONDS}")
    if not 0 < (port or DEFAULT_PORT) < 65536:
        raise SettingsError(f"port {port} is out of range")
    return ProbeSettings(host=host, port=port or DEFAULT_PORT, proto=proto or "udp", family=family,
                         timeout=timeout, retries=retries, retry_interval=retry_interval,
                         wrapper=wrapper, validate=validate)


def _seconds(value) -> bool:
    """A usable time: nan and inf are floats too, and no deadline can be built from them."""
    return math.isfinite(value) and 0 < value <= MAX_SECONDS


def _remote_for(host, remotes):
    """The profile's remote to take port and proto from: the first one, or the one
    named like the host given on the command line (then a host given that is not
    in the profile still gets the first remote's port and proto, as it is probably
    the same server by another name or address)."""
    if not remotes:
        return None
    named = [r for r in remotes if host and r.host.lower() == host.lower()]
    return (named or remotes)[0]


def _wrapper(tls_auth, key_direction, auth, tls_crypt, tls_crypt_v2, profile):
    from .wrap import NoWrapping, TLSAuth, TLSCrypt, TLSCryptV2Client

    given = [name for name, value in (("--tls-auth", tls_auth), ("--tls-crypt", tls_crypt),
                                      ("--tls-crypt-v2", tls_crypt_v2)) if value]
    if len(given) > 1:
        raise SettingsError(f"{' and '.join(given)} exclude each other: a server uses one of them")
    # A key given on the command line replaces the profile's (whatever its kind): one wrapping.
    keys = control_keys(None if given else profile, tls_auth, tls_crypt, tls_crypt_v2,
                        v2_types=(TLSCryptV2ClientKey, TLSCryptV2ServerKey))
    if keys.tls_crypt_v2 is not None:
        return TLSCryptV2Client(_client_key(keys.tls_crypt_v2, tls_crypt_v2))
    if keys.tls_crypt is not None:
        return TLSCrypt(keys.tls_crypt, "client")
    if keys.tls_auth is None:
        return NoWrapping()
    key = keys.tls_auth
    try:
        digest = digest_name(auth or "SHA1")
    except ValueError as error:
        raise SettingsError(str(error)) from None
    return TLSAuth(key, parse_key_direction(key_direction), digest)


def parse_key_direction(text) -> Optional[int]:
    if text is None:
        return 1  # what clients almost always use
    value = str(text).lower()
    if value in ("0", "1"):
        return int(value)
    if value in ("none", "bidirectional"):
        return None
    raise SettingsError(f"--key-direction must be 0, 1 or none, not '{text}'")


def _client_key(key, path):
    if isinstance(key, TLSCryptV2ServerKey):
        raise KeyFileError(f"{path}: is the server's tls-crypt-v2 key; a probe needs a client key "
                           f"(openvpn --genkey tls-crypt-v2-client CLIENT.key --tls-crypt-v2 {path})")
    return key
