"""Find a server's control-channel settings from outside with one key file.

A server drops resets made with the wrong key direction, digest or wrapping
without a word, so every combination is sent (each with its own session id)
and the ones the server answers - with a reply that verifies - are reported.
Over UDP all resets go out from one socket, paced to stay far below OpenVPN's
reset rate limit (``--connect-freq-initial``, 100 per 10 s by default), and the
replies are matched by the session id they echo. Over TCP a wrong combination
makes the server close the connection, so they are tried one by one.
"""

import time
from dataclasses import dataclass, field
from typing import List

from . import transport
from .keys import StaticKey, TLSCryptV2ClientKey
from .layers import EARLY_NEG_START, OpenVPNReset, from_wire
from .probe import new_session_id
from .protocol import Opcode, first_byte
from .settings import ProbeSettings, describe_wrapper
from .wrap import TLSAuth, TLSCrypt, TLSCryptV2Client, WrapError

PACE = 0.05  # seconds between resets: 20/s, a fifth of OpenVPN's default limit


@dataclass
class Tried:
    label: str
    outcome: str = "no answer"
    works: bool = False


@dataclass
class TryKeysResult:
    host: str
    port: int
    proto: str
    tried: List[Tried] = field(default_factory=list)
    working: List[str] = field(default_factory=list)
    message: str = ""
    hint: str = ""

    @property
    def ok(self):
        return bool(self.working)

    def to_dict(self):
        return {"host": self.host, "port": self.port, "proto": self.proto, "ok": self.ok,
                "working": self.working, "message": self.message,
                "tried": [vars(t) for t in self.tried]}


def candidates(key) -> list:
    """Every wrapper a server could be using with this key, most likely first."""
    if isinstance(key, TLSCryptV2ClientKey):
        return [TLSCryptV2Client(key)]
    if not isinstance(key, StaticKey):
        raise TypeError("--try-keys needs a static key (tls-auth/tls-crypt) or a tls-crypt-v2 client key")
    digests = ["SHA1", "SHA256", "SHA512", "SHA384", "SHA224", "MD5"]
    combos = [TLSAuth(key, direction, digest) for digest in digests for direction in (1, 0, None)]
    return combos[:3] + [TLSCrypt(key, "client")] + combos[3:]


def _reset_for(wrapper, session_id):
    plain = bytes(OpenVPNReset(session_id=session_id))
    if wrapper.wrapping.kind == "tls-crypt-v2":  # the same plain layout under another opcode
        plain = bytes([first_byte(Opcode.P_CONTROL_HARD_RESET_CLIENT_V3)]) + plain[1:]
        return wrapper.wrap(plain, EARLY_NEG_START + 1, int(time.time()))
    return wrapper.wrap(plain, 1, int(time.time()))


def _echoes(wrapper, reply, session_id):
    try:
        opened = wrapper.unwrap(reply)
    except WrapError:
        return False
    wire = opened.decrypted or reply
    packet, problem = from_wire(wire, wrapper.wrapping._replace(decrypted=wrapper.wrapping.is_tls_crypt))
    return (problem is None and packet.opcode == Opcode.P_CONTROL_HARD_RESET_SERVER_V2 and packet.acks
            and packet.remote_session_id == session_id)


def try_keys(settings: ProbeSettings, key) -> TryKeysResult:
    result = TryKeysResult(settings.host, settings.port, settings.proto)
    wrappers = candidates(key)
    result.tried = [Tried(describe_wrapper(w)) for w in wrappers]
    deadline = time.monotonic() + settings.timeout
    try:
        addresses = transport.resolve(settings.host, settings.port, settings.proto, settings.family)
    except OSError as error:
        result.message = f"cannot resolve {settings.host}: {getattr(error, 'strerror', None) or error}"
        return result
    address = addresses[0]
    if settings.proto == "udp":
        _try_udp(address, wrappers, result, settings, deadline)
    else:
        _try_tcp(address, wrappers, result, settings, deadline)
    result.working = [t.label for t in result.tried if t.works]
    if result.working:
        result.hint = result.working[0]
        result.message = f"the server answers {result.working[0]}"
    elif not result.message:
        result.message = (f"{address}/{settings.proto} answered none of {len(wrappers)} combinations: "
                          "another key, the port filtered, the server down"
                          + (", or its reset rate limit (--connect-freq-initial) reached by other probes"
                             if settings.proto == "udp" else ""))
    return result


def _try_udp(address, wrappers, result, settings, deadline):
    session_ids = [new_session_id() for _ in wrappers]
    try:
        link = transport.UDPTransport(address)
    except transport.TransportError as error:
        result.message = str(error)
        return
    rounds = 1 + settings.retries
    try:
        for number in range(1, rounds + 1):
            pending = [i for i, t in enumerate(result.tried) if t.outcome == "no answer"]
            if not pending or time.monotonic() >= deadline:
                break
            sent = {}
            for index in pending:
                link.send(_reset_for(wrappers[index], session_ids[index]))
                sent[index] = time.monotonic()
                time.sleep(PACE)
            last_send = time.monotonic()
            # the last round listens for the rest of the budget (-t is the whole of it)
            listen_until = deadline if number == rounds else min(deadline, last_send + settings.retry_interval)
            while time.monotonic() < listen_until:
                try:
                    reply = link.receive(listen_until)
                except transport.Timeout:
                    break
                for index, wrapper in enumerate(wrappers):
                    if _echoes(wrapper, reply, session_ids[index]):
                        result.tried[index].outcome, result.tried[index].works = "answered, reply verifies", True
                        # Answers to the rest of this round come within a few round trips.
                        rtt = time.monotonic() - sent[index]
                        listen_until = min(listen_until, last_send + max(0.5, 4 * rtt))
            if any(t.works for t in result.tried):
                break
    except transport.Refused:
        result.message = f"{address}/udp: nothing listens on that UDP port (ICMP port unreachable)"
    except transport.TransportError as error:
        result.message = str(error)
    finally:
        link.close()


def _try_tcp(address, wrappers, result, settings, deadline):
    for index, wrapper in enumerate(wrappers):
        if time.monotonic() >= deadline:
            break
        session_id = new_session_id()
        try:
            link = transport.TCPTransport(address, deadline)
        except transport.Refused:
            result.message = f"{address}/tcp: connection refused"
            return
        except transport.TransportError as error:
            result.message = str(error)
            return
        try:
            link.send(_reset_for(wrapper, session_id))
            # A wrong combination is closed at once; a slow server gets its share of what is left.
            share = (deadline - time.monotonic()) / (len(wrappers) - index)
            reply = link.receive(min(deadline, time.monotonic() + max(settings.retry_interval, share)))
            if _echoes(wrapper, reply, session_id):
                result.tried[index].outcome, result.tried[index].works = "answered, reply verifies", True
            else:
                result.tried[index].outcome = "answered, reply does not verify"
        except transport.TransportError as error:
            result.tried[index].outcome = {"closed": "connection closed", "reset": "connection reset",
                                           "timeout": "no answer"}.get(error.kind, error.kind)
        finally:
            link.close()
