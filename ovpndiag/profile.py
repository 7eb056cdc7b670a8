"""Read what ovpndiag needs from a client's .ovpn profile.

Takes ``remote``, ``port``, ``proto``, ``auth``, ``key-direction``, where a
``secret`` (static-key mode) is, and the control-channel keys, given as files
(``tls-auth ta.key 1``) or inline blocks (``<tls-auth>...</tls-auth>``). Relative key paths are looked up beside the
profile first, then in the current directory, as users run OpenVPN from either.
For the staged handshake it also takes ``ca``, ``cert``, ``key`` and ``auth-user-pass``
(files or inline blocks: kept as a path or the block's bytes, read and checked by
ovpndiag.handshake_settings), ``askpass``, ``remote-cert-tls``, ``verify-x509-name``,
``data-ciphers`` (or the older ``ncp-ciphers``), ``tls-version-max``, ``comp-lzo``/``compress`` and
``fragment`` (the data channel's framing), and where a ``pkcs12`` is.
Everything else in the profile is ignored.
"""

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional, Tuple, Union

from .keys import (KeyFileError, StaticKey, TLSCryptV2ClientKey, parse_key, read_key, read_small_file)

_INLINE_KEYS = ("tls-auth", "tls-crypt", "tls-crypt-v2")
_PEM_BLOCKS = ("ca", "cert", "key")  # kept as given (a path or inline bytes); read when used
_X509_NAME_KINDS = ("subject", "name", "name-prefix")
MAX_PROFILE_SIZE = 1024 * 1024  # inline certificates and keys make a profile tens of KB


class ProfileError(KeyFileError):
    """A profile that cannot be used; the message names the file and line."""


@dataclass
class Remote:
    host: str
    port: Optional[int] = None
    proto: Optional[str] = None


@dataclass
class Profile:
    source: str
    remotes: List[Remote] = field(default_factory=list)
    port: Optional[int] = None
    proto: Optional[str] = None
    auth: Optional[str] = None
    key_direction: Optional[int] = None  # from key-direction, or tls-auth's second argument
    tls_auth: Optional[StaticKey] = None
    tls_crypt: Optional[StaticKey] = None
    tls_crypt_v2: Optional[TLSCryptV2ClientKey] = None
    secret: Optional[str] = None  # where a static-key ("secret") line is: p2p mode, no TLS handshake
    ca: Union[Path, bytes, None] = None  # a file's path, or an inline block's bytes
    cert: Union[Path, bytes, None] = None
    key: Union[Path, bytes, None] = field(default=None, repr=False)  # (a private key: never shown)
    # auth-user-pass: a file's path, an inline block's bytes, or True when the profile
    # asks for them at a prompt (auth-user-pass alone)
    auth_user_pass: Union[Path, bytes, bool, None] = field(default=None, repr=False)  # (holds a password)
    askpass: Union[Path, bool, None] = None  # the private key's passphrase file, or True (a prompt)
    remote_cert_tls: Optional[str] = None
    verify_x509_name: Optional[Tuple[str, str]] = None  # (name, "subject"|"name"|"name-prefix")
    data_ciphers: Optional[List[str]] = None
    tls_version_max: Optional[str] = None
    compress: Optional[str] = None  # the comp-lzo/compress line: how the data channel is framed
    fragment: Optional[int] = None  # --fragment: data packets carry a fragment header
    pkcs12: Optional[str] = None  # where a pkcs12 line or block is (not supported: says so when used)
    where: Dict[str, str] = field(default_factory=dict)  # option -> "profile:line" it came from


def overlay(profile: Optional[Profile], **given) -> SimpleNamespace:
    """The one rule for options over a profile: each option given (not None, not empty)
    wins, else the profile's value of the same name (None without one), e.g.
    ``overlay(profile, auth=auth).auth``."""
    return SimpleNamespace(**{name: value if value is not None and value != "" else getattr(profile, name, None)
                              for name, value in given.items()})


def control_keys(profile: Optional[Profile], tls_auth=None, tls_crypt=None, tls_crypt_v2=None,
                 v2_types=(TLSCryptV2ClientKey,)) -> SimpleNamespace:
    """The control-channel keys under the same rule: each read from the file given,
    else the profile's; ``given`` names the options given (e.g. ["--tls-auth"])."""
    keys = overlay(profile, tls_auth=tls_auth and read_key(tls_auth, StaticKey),
                   tls_crypt=tls_crypt and read_key(tls_crypt, StaticKey),
                   tls_crypt_v2=tls_crypt_v2 and read_key(tls_crypt_v2, v2_types))
    keys.given = [name for name, value in (("--tls-auth", tls_auth), ("--tls-crypt", tls_crypt),
                                           ("--tls-crypt-v2", tls_crypt_v2)) if value]
    return keys


def read_profile(path) -> Profile:
    source = str(path)
    text = read_small_file(path, MAX_PROFILE_SIZE, "profile", ProfileError).decode("utf-8", "replace")
    return parse_profile(text, source, base_dir=Path(path).parent)


def parse_profile(text: str, source: str = "profile", base_dir: Optional[Path] = None) -> Profile:
    profile = Profile(source)
    lines = text.replace("\r\n", "\n").split("\n")
    index = 0
    while index < len(lines):
        number, line = index + 1, lines[index].strip()
        index += 1
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("<") and line.endswith(">") and not line.startswith("</"):
            tag = line[1:-1]
            body, index = _inline_block(lines, index, tag, f"{source}:{number}")
            if tag == "secret":
                profile.secret = profile.secret or f"{source}:{number}"
            elif tag in _INLINE_KEYS:
                _set_key(profile, tag, parse_key(body, f"{source}: <{tag}>"), f"{source}:{number}")
            elif tag in _PEM_BLOCKS or tag == "auth-user-pass":
                setattr(profile, tag.replace("-", "_"), body.encode("utf-8", "replace"))
                profile.where[tag] = f"{source}:{number}: <{tag}>"
            elif tag == "pkcs12":
                profile.pkcs12 = f"{source}:{number}"
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as error:
            raise ProfileError(f"{source}:{number}: {error}") from None
        if words:
            _apply_option(profile, words, f"{source}:{number}", base_dir)
    return profile


def _inline_block(lines, index, tag, where) -> Tuple[str, int]:
    body = []
    while index < len(lines):
        if lines[index].strip() == f"</{tag}>":
            return "\n".join(body), index + 1
        body.append(lines[index])
        index += 1
    raise ProfileError(f"{where}: <{tag}> is never closed with </{tag}>")


def _apply_option(profile, words, where, base_dir):
    option, args = words[0].lstrip("-"), words[1:]
    if option == "remote" and args:
        profile.remotes.append(Remote(args[0], _port(args[1], where) if len(args) > 1 else None,
                                      args[2] if len(args) > 2 else None))
    elif option in ("port", "rport") and args:
        profile.port = _port(args[0], where)
    elif option == "proto" and args:
        profile.proto = args[0]
    elif option == "auth" and args:
        profile.auth = args[0]
    elif option == "secret":
        profile.secret = profile.secret or where
    elif option == "key-direction" and args:
        profile.key_direction = _direction(args[0], where)
    elif option in _INLINE_KEYS and args:
        if len(args) > 1 and option == "tls-auth":
            profile.key_direction = _direction(args[1], where)
        if args[0] != "[inline]":  # "[inline]": the key is in a block of the same name
            try:
                key = read_key(_find(args[0], base_dir))
            except KeyFileError as error:
                raise ProfileError(f"{where}: {option} {error}") from None
            _set_key(profile, option, key, where)
    elif option in _PEM_BLOCKS and args:
        if args[0] != "[inline]":
            setattr(profile, option, _find(args[0], base_dir))
            profile.where[option] = f"{where}: {option}"
    elif option == "auth-user-pass":
        if not args:
            profile.auth_user_pass = profile.auth_user_pass or True  # (a block may come later)
        elif args[0] != "[inline]":
            profile.auth_user_pass = _find(args[0], base_dir)
            profile.where[option] = f"{where}: {option}"
    elif option == "askpass":
        profile.askpass = _find(args[0], base_dir) if args else True
        profile.where[option] = f"{where}: {option}"
    elif option == "remote-cert-tls" and args:
        if args[0] not in ("server", "client"):
            raise ProfileError(f"{where}: remote-cert-tls must be server or client, not '{args[0]}'")
        profile.remote_cert_tls = args[0]
    elif option == "verify-x509-name" and args:
        kind = args[1] if len(args) > 1 else "subject"
        if kind not in _X509_NAME_KINDS:
            raise ProfileError(f"{where}: verify-x509-name type must be one of {', '.join(_X509_NAME_KINDS)}, "
                               f"not '{kind}'")
        profile.verify_x509_name = (args[0], kind)
    elif option in ("data-ciphers", "ncp-ciphers") and args:
        profile.data_ciphers = [name for name in args[0].split(":") if name]
        profile.where["data-ciphers"] = f"{where}: {option}"
    elif option == "pkcs12":
        profile.pkcs12 = where
    elif option == "tls-version-max" and args:
        profile.tls_version_max = args[0]
    elif option in ("comp-lzo", "compress"):
        profile.compress = " ".join([option] + args)
    elif option == "fragment" and args:
        if not args[0].isdigit():
            raise ProfileError(f"{where}: fragment needs a size in bytes, not '{args[0]}'")
        profile.fragment = int(args[0])


def _set_key(profile, option, key, where):
    expected = TLSCryptV2ClientKey if option == "tls-crypt-v2" else StaticKey
    if not isinstance(key, expected):
        raise ProfileError(f"{key.source}: {option} needs "
                           f"{'a tls-crypt-v2 client key' if option == 'tls-crypt-v2' else 'a static key'}"
                           f" (given at {where})")
    setattr(profile, option.replace("-", "_"), key)


def _find(name, base_dir):
    path = Path(name)
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        return base_dir / path
    return path


def _port(text, where):
    if text.isdigit() and 0 < int(text) < 65536:
        return int(text)
    raise ProfileError(f"{where}: '{text}' is not a port number")


def _direction(text, where):
    if text in ("0", "1"):
        return int(text)
    raise ProfileError(f"{where}: key direction must be 0 or 1, not '{text}'")
