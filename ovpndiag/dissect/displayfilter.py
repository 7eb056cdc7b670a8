"""Display filters (``-Y``): Wireshark's syntax over ovpndiag's own field names.

``compile_filter(text)`` parses a filter once into a predicate, ``predicate(record)
-> bool``, made of closures: nothing is parsed or looked up by name per record, and
nothing is evaluated as Python. The fields are the keys of ``dissect --json`` (see
``FIELDS``); their values are read by ``field_value``, the one place that knows
what a record is (a dissect.record.Record, or a dict with the JSON keys).

Semantics follow Wireshark's: a comparison with a field the packet does not have is
false (``!=`` too), so ``not x == 1`` and ``x != 1`` differ on packets without x; a
list field (acks, tls, tlvs) matches ``==``/``<``/``contains`` when any element does
and ``!=`` when every element does, and an empty list is absent; ``and`` binds more
tightly than ``or``; ``matches`` is a case-insensitive regular expression. Beyond
Wireshark: ``hmac_valid`` is null (present, unknown) on wrapped packets read without
a key, which only ``hmac_valid`` (presence) and ``== null``/``!= null`` see.
"""

import ipaddress
import operator
import re
from difflib import get_close_matches
from typing import Callable, List, NamedTuple

from ..protocol import OPCODES

INT, FLOAT, ADDRESS, STRING, CHOICE, BOOL, SESSION_ID, INTS, STRINGS = (
    "number", "number", "address", "string", "name", "boolean", "session id", "numbers", "strings")

# Each JSON key and the kind of its value; "file" (the capture's name) is -T fields' only.
FIELDS = {
    "frame": INT, "time": FLOAT, "src": ADDRESS, "dst": ADDRESS, "sport": INT, "dport": INT,
    "transport": CHOICE, "length": INT, "opcode": CHOICE, "opcode_value": INT, "key_id": INT,
    "session_id": SESSION_ID, "remote_session_id": SESSION_ID, "wrapping": CHOICE, "dynamic": BOOL,
    "hmac_size": INT, "replay_packet_id": INT, "net_time": INT, "acks": INTS, "message_packet_id": INT,
    "peer_id": INT, "payload_len": INT, "ciphertext_len": INT, "wkc_len": INT, "tlvs": STRINGS,
    "hmac_valid": BOOL, "key_direction": STRING, "tls": STRINGS, "malformed": STRING, "file": STRING,
}
CHOICES = {
    "transport": ("udp", "tcp"),
    "opcode": tuple(OPCODES.values()),
    "wrapping": ("none", "tls-auth", "tls-crypt", "tls-crypt-v2"),
}
MISSING = object()
# Wireshark's names for what these fields are, for the error that says which one to use.
WIRESHARK_NAMES = {
    "frame.number": "frame", "frame.time_epoch": "time", "frame.time": "time", "ip.src": "src",
    "ipv6.src": "src", "ip.dst": "dst", "ipv6.dst": "dst", "ip.addr": "src or dst", "ipv6.addr": "src or dst",
    "udp.srcport": "sport", "tcp.srcport": "sport", "udp.dstport": "dport", "tcp.dstport": "dport",
    "udp.port": "sport or dport", "tcp.port": "sport or dport", "udp": "transport == udp",
    "tcp": "transport == tcp", "openvpn.opcode": "opcode", "openvpn.type": "opcode",
    "openvpn.keyid": "key_id", "openvpn.peerid": "peer_id", "openvpn.sessionid": "session_id",
    "openvpn.rsessionid": "remote_session_id", "openvpn.pid": "replay_packet_id",
    "openvpn.net_time": "net_time", "openvpn.mpid": "message_packet_id", "openvpn.mpidarrayelement": "acks",
    "openvpn.mpidarraylength": "acks", "openvpn.plen": "length", "openvpn.wkc_len": "wkc_len",
    "openvpn.hmac": "hmac_valid",
}


class FilterError(ValueError):
    """A filter that cannot be compiled; ``position`` counts characters from 1."""

    def __init__(self, message: str, position: int, hint: str = ""):
        super().__init__(f"{message} at character {position}{hint}")
        self.position = position


def field_value(record, name):
    """The value of field ``name`` in ``record``, or MISSING. A dict record has the
    JSON keys; a record object has attributes named as them (None: absent), and its
    hmac_valid is null rather than absent where ``signed`` says the packet has one."""
    if record.__class__ is dict:
        return record.get(name, MISSING)
    value = getattr(record, name, None)
    if value is None:
        return None if name == "hmac_valid" and getattr(record, "signed", False) else MISSING
    return value


def _getter(name) -> Callable:
    """field_value for one name, as cheap as it can be for dict records."""
    def get(record):
        if record.__class__ is dict:
            return record.get(name, MISSING)
        return field_value(record, name)
    return get


# --- tokens -------------------------------------------------------------------

class Token(NamedTuple):
    kind: str  # "op", "word", "string", "end"
    text: str  # the sign or word; a string's value
    position: int  # from 1


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|<=|>=|&&|\|\||[<>!(){},~])
  | (?P<word>[A-Za-z0-9_.:/\-]+)
""", re.VERBOSE)
_WORD_OPS = {"eq": "==", "ne": "!=", "lt": "<", "gt": ">", "le": "<=", "ge": ">=", "and": "&&", "or": "||",
             "not": "!", "contains": "contains", "matches": "matches", "in": "in"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"'}


def tokens(text: str) -> List[Token]:
    found, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            if text[at] == '"':
                raise FilterError("a string without its closing quote", at + 1)
            if text[at] == "=":
                raise FilterError("'=' is not a comparison (use ==)", at + 1)
            raise FilterError(f"unexpected '{text[at]}'", at + 1)
        kind = match.lastgroup
        if kind == "string":
            found.append(Token("string", _unescape(match.group()[1:-1], at + 1), at + 1))
        elif kind == "word":
            word = match.group()
            op = _WORD_OPS.get(word.lower())
            found.append(Token("op", op, at + 1) if op else Token("word", word, at + 1))
        elif kind == "op":
            op = match.group()
            found.append(Token("op", "matches" if op == "~" else op, at + 1))
        at = match.end()
    found.append(Token("end", "", len(text) + 1))
    return found


def _unescape(body, position):
    out, index = [], 0
    while index < len(body):
        char = body[index]
        if char == "\\":
            following = body[index + 1]
            if following == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", body[index + 2:index + 4]):
                out.append(chr(int(body[index + 2:index + 4], 16)))
                index += 4
                continue
            if following not in _ESCAPES:
                raise FilterError(f"unknown escape '\\{following}' in a string", position + index + 1)
            out.append(_ESCAPES[following])
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


# --- parser: text -> closures -------------------------------------------------

_RELATIONS = ("==", "!=", "<", ">", "<=", ">=")


class _Parser:
    """Recursive descent, one method per precedence level:
    or := and {"||" and};  and := not {"&&" not};  not := "!" not | primary;
    primary := "(" or ")" | FIELD [RELATION value | contains value | matches value | in "{" values "}"]."""

    def __init__(self, text):
        self.tokens = tokens(text)
        self.at = 0

    def peek(self) -> Token:
        return self.tokens[self.at]

    def take(self) -> Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def parse(self):
        if self.peek().kind == "end":
            raise FilterError("an empty filter", 1)
        test = self.either()
        token = self.peek()
        if token.kind != "end":
            raise FilterError(f"unexpected {_shown(token)} (expected and, or or the end)", token.position)
        return test

    def either(self):
        tests = [self.both()]
        while self.peek().text == "||" and self.peek().kind == "op":
            self.take()
            tests.append(self.both())
        return _either(tests)

    def both(self):
        tests = [self.negation()]
        while self.peek().text == "&&" and self.peek().kind == "op":
            self.take()
            tests.append(self.negation())
        return _both(tests)

    def negation(self):
        token = self.peek()
        if token.kind == "op" and token.text == "!":
            self.take()
            test = self.negation()
            return lambda record: not test(record)
        return self.primary()

    def primary(self):
        token = self.take()
        if token.kind == "op" and token.text == "(":
            test = self.either()
            closing = self.take()
            if closing.kind != "op" or closing.text != ")":
                raise FilterError(f"expected ')' to close the '(' at character {token.position}, "
                                  f"not {_shown(closing)}", closing.position)
            return test
        if token.kind != "word":
            raise FilterError(f"expected a field name, not {_shown(token)}", token.position)
        name = token.text
        if name == "file":  # (the renderer's, not the packet's: -T fields -e file)
            raise FilterError("'file' names the capture, not a packet field: not in a filter", token.position)
        if name not in FIELDS:
            fields = [field for field in FIELDS if field != "file"]
            close = WIRESHARK_NAMES.get(name.lower()) or next(iter(get_close_matches(name, fields, n=1)), None)
            hint = f" (did you mean {close}?)" if close else f" (the fields: {', '.join(fields)})"
            raise FilterError(f"unknown field '{name}'", token.position, hint)
        sign = self.peek()
        if sign.kind == "op" and sign.text in _RELATIONS + ("contains", "matches", "in"):
            self.take()
            if sign.text == "in":
                return self.membership(name, sign)
            value = self.take()
            if value.kind not in ("word", "string"):
                raise FilterError(f"expected a value after '{sign.text}', not {_shown(value)}",
                                  value.position)
            return _comparison(name, sign, value)
        return _presence(name)

    def membership(self, name, sign):
        opening = self.take()
        if opening.kind != "op" or opening.text != "{":
            raise FilterError(f"expected '{{' after 'in', not {_shown(opening)}", opening.position)
        tests = []
        while True:
            value = self.take()
            if value.kind == "op" and value.text == "}" and tests:
                break
            if value.kind == "op" and value.text == "," and tests:
                continue
            if value.kind not in ("word", "string"):
                raise FilterError(f"expected a value or '}}', not {_shown(value)}", value.position)
            tests.append(_comparison(name, Token("op", "==", sign.position), value))
        return _either(tests)


def _either(tests):
    """tests[0] or tests[1] or ...: nested closures (any() over a generator costs ~10x more)."""
    test = tests[0]
    for other in tests[1:]:
        test = (lambda first, second: lambda record: first(record) or second(record))(test, other)
    return test


def _both(tests):
    test = tests[0]
    for other in tests[1:]:
        test = (lambda first, second: lambda record: first(record) and second(record))(test, other)
    return test


def _shown(token):
    if token.kind == "end":
        return "the end of the filter"
    return f'"{token.text}"' if token.kind == "string" else f"'{token.text}'"


def _presence(name):
    get, kind = _getter(name), FIELDS[name]
    if kind in (INTS, STRINGS):
        return lambda record: bool(_list(get(record)))  # (an empty list is absent)
    return lambda record: get(record) is not MISSING


# --- comparisons ----------------------------------------------------------------

def _comparison(name, sign, value):
    """The test ``name sign value``, the value converted once to the field's kind."""
    kind, op = FIELDS[name], sign.text
    if name == "opcode" and value.kind == "word" and re.fullmatch(r"\d+|0[xX][0-9a-fA-F]+", value.text):
        name, kind = "opcode_value", INT  # opcode == 4, as in Wireshark's openvpn.opcode == 4
    get = _getter(name)
    if op == "matches":
        if kind not in (STRING, CHOICE, ADDRESS, STRINGS, SESSION_ID):
            raise FilterError(f"'matches' applies to text, and {name} is a {kind}", sign.position)
        try:
            pattern = re.compile(value.text, re.IGNORECASE)
        except re.error as error:
            raise FilterError(f"bad regular expression: {error}", value.position) from None
        return _text_test(get, kind, pattern.search)
    if op == "contains":
        if kind in (INT, BOOL):
            raise FilterError(f"'contains' applies to text and lists, and {name} is a {kind} (use ==)",
                              sign.position)
        if kind == INTS:
            return _list_test(get, operator.eq, _number(name, value, integer=True), every=False)
        if kind == SESSION_ID:
            wanted = value.text.lower()
            if wanted.startswith("0x"):
                wanted = wanted[2:]
            return _text_test(get, kind, lambda text: wanted in text)
        wanted = value.text
        return _text_test(get, kind, lambda text: wanted in text)
    if kind == BOOL:
        if op not in ("==", "!="):
            raise FilterError(f"only == and != compare {name}, a boolean", sign.position)
        return _boolean(get, name, op, value)
    if kind == ADDRESS:
        return _address(get, name, op, value)
    literal = _convert(name, kind, value)
    relation = _RELATION_OF[op]
    if kind in (INTS, STRINGS):
        return _list_test(get, relation, literal, every=op == "!=")  # != : Wireshark's "all not equal"
    if kind == SESSION_ID:
        def test(record):
            found = get(record)
            if found is MISSING or found is None:
                return False
            if found.__class__ is str:  # (shown as hex)
                found = int(found, 16)
            return relation(found, literal)
        return test
    if kind == INT or kind == FLOAT:
        def test(record):
            found = get(record)
            return found is not MISSING and found is not None and relation(found, literal)
        return test
    def test(record):
        found = get(record)
        return found.__class__ is str and relation(found, literal)
    return test


def _list_test(get, relation, literal, every):
    """A list field: any element relates to ``literal`` (every one, with ``every``); empty is absent.
    Plain loops: most packets have no list, and a generator per packet costs more than the test."""
    def test(record):
        found = get(record)
        if found is MISSING or not found:
            return False
        for item in found:
            if relation(item, literal) is not every:
                return not every
        return every
    return test


def _list(found):
    return () if found is MISSING or found is None else found


def _text_test(get, kind, check):
    """contains / matches on a field's text (each element of a list; a session id's 16 hex digits)."""
    if kind in (STRINGS, INTS):
        def listed(record):
            found = get(record)
            if found is MISSING or not found:
                return False
            for item in found:
                if check(str(item)):
                    return True
            return False
        return listed

    def test(record):
        found = get(record)
        if found is MISSING or found is None:
            return False
        if kind == SESSION_ID and found.__class__ is int:
            found = f"{found:016x}"
        return check(found)
    return test


def _boolean(get, name, op, value):
    word = value.text.lower()
    literal = {"true": True, "1": True, "false": False, "0": False, "null": None}.get(word, MISSING)
    if literal is MISSING or (literal is None and name != "hmac_valid"):
        allowed = "true, false or null" if name == "hmac_valid" else "true or false"
        raise FilterError(f"{name} is {allowed}, not {_shown(value)}", value.position)
    if op == "==":
        if literal is None:
            return lambda record: get(record) is None
        return lambda record: get(record) is literal  # (a null or absent value is neither)
    if literal is None:
        return lambda record: get(record) not in (None, MISSING)
    other = not literal
    return lambda record: get(record) is other


def _address(get, name, op, value):
    """src/dst against an address or a network (10.0.0.0/8, as in Wireshark)."""
    text = value.text
    try:
        network = ipaddress.ip_network(text, strict=False) if "/" in text else None
        address = None if network else ipaddress.ip_address(text)
    except ValueError:
        raise FilterError(f"{name} is an IP address (or a network, 10.0.0.0/8), not {_shown(value)}",
                          value.position) from None
    if network is not None:
        if op not in ("==", "!="):
            raise FilterError(f"only == and != compare {name} with a network", value.position)
        inside = op == "=="

        def test(record):
            found = get(record)
            if found.__class__ is not str:
                return False
            parsed = _parse_address(found)
            return parsed is not None and (parsed in network) is inside
        return test
    if op in ("==", "!="):  # as text, in the form the reader gives (compressed), no parsing per packet
        wanted, equal = address.compressed, op == "=="
        return lambda record: (lambda found: found.__class__ is str and (found == wanted) is equal)(get(record))
    relation = _RELATION_OF[op]

    def ordered(record):
        found = get(record)
        parsed = _parse_address(found) if found.__class__ is str else None
        return parsed is not None and parsed.version == address.version and relation(parsed, address)
    return ordered


_ADDRESSES = {}


def _parse_address(text):
    parsed = _ADDRESSES.get(text, MISSING)
    if parsed is MISSING:
        try:
            parsed = ipaddress.ip_address(text)
        except ValueError:
            parsed = None
        if len(_ADDRESSES) < 65536:
            _ADDRESSES[text] = parsed
    return parsed


def _convert(name, kind, value):
    if kind in (INT, INTS):
        return _number(name, value, integer=True)
    if kind == FLOAT:
        return _number(name, value, integer=False)
    if kind == SESSION_ID:
        text = value.text.lower()
        digits = text[2:] if text.startswith("0x") else text
        if not re.fullmatch(r"[0-9a-f]{1,16}", digits):
            raise FilterError(f"{name} is a session id of up to 16 hex digits (as --json shows it), "
                              f"not {_shown(value)}", value.position)
        return int(digits, 16)
    if kind == CHOICE:
        choices = CHOICES[name]
        for choice in choices:
            if choice.lower() == value.text.lower():
                return choice
        raise FilterError(f"{name} has no value {_shown(value)}", value.position, f" (one of {', '.join(choices)})")
    return value.text


def _number(name, value, integer):
    text = value.text
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        return int(text, 10)  # (leading zeros)
    except ValueError:
        pass
    if not integer or re.fullmatch(r"-?\d+\.\d*", text):
        try:
            return float(text)
        except ValueError:
            pass
    raise FilterError(f"{name} is a number, not {_shown(value)}", value.position)


_RELATION_OF = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt, "<=": operator.le,
                ">=": operator.ge}


def compile_filter(text: str) -> Callable:
    """The predicate of a display filter; FilterError names what is wrong and where."""
    return _Parser(text).parse()
