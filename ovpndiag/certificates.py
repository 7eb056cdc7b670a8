"""Facts of an X.509 certificate that both the live client (``client.tlslayer``)
and the capture reader (``dissect.tls``) report: its validity and its public key.
``cryptography`` is imported by the caller's certificate object, not here."""

import datetime


def validity(certificate):
    """(not before, not after) as aware UTC datetimes."""
    try:
        return certificate.not_valid_before_utc, certificate.not_valid_after_utc
    except AttributeError:  # cryptography < 42
        utc = datetime.timezone.utc
        return (certificate.not_valid_before.replace(tzinfo=utc), certificate.not_valid_after.replace(tzinfo=utc))


def key_description(public_key, detailed: bool = False) -> str:
    """``RSA 2048`` / ``EC secp256r1`` / ``Ed25519`` ... (no key material); ``detailed``:
    ``RSA, 2048 bits, exponent 65537`` / ``EC secp256r1, 256 bits``, as -V shows it."""
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

    if isinstance(public_key, rsa.RSAPublicKey):
        return (f"RSA, {public_key.key_size} bits, exponent {public_key.public_numbers().e}" if detailed
                else f"RSA {public_key.key_size}")
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return (f"EC {public_key.curve.name}, {public_key.key_size} bits" if detailed
                else f"EC {public_key.curve.name}")
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"DSA, {public_key.key_size} bits" if detailed else f"DSA {public_key.key_size}"
    return type(public_key).__name__
