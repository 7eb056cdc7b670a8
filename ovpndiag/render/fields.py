"""``-T fields -e FIELD ...``: one line per packet, the fields' values separated by
tabs, as ``tshark -T fields`` prints them.

The fields are the keys of ``--json`` (``displayfilter.FIELDS``), each value as
``--json`` gives it except where tshark users expect otherwise: a field the packet
does not have (and hmac_valid's null) is empty, a list's elements are joined with
commas, a boolean is 1 or 0 (tshark 4.0's way). ``-E`` takes tshark's options:
header=y|n, separator=/t|/s|CHAR, aggregator=,|/s|CHAR, occurrence=a|f|l, quote=d|s|n.
"""

from difflib import get_close_matches
from typing import Callable, Iterable, List, Optional

from ..dissect.displayfilter import BOOL, FIELDS, INTS, MISSING, SESSION_ID, STRINGS, WIRESHARK_NAMES, field_value


class FieldsError(ValueError):
    """An unknown field or -E option."""


class FieldsOptions:
    def __init__(self):
        self.header = False
        self.separator = "\t"
        self.aggregator = ","
        self.occurrence = "a"
        self.quote = ""


def parse_options(settings: Iterable[str]) -> FieldsOptions:
    """tshark's ``-E name=value`` settings."""
    options = FieldsOptions()
    for setting in settings:
        name, equals, value = setting.partition("=")
        if not equals:
            raise FieldsError(f"-E {setting}: expected NAME=VALUE (header, separator, aggregator, occurrence, quote)")
        if name == "header" and value in ("y", "n"):
            options.header = value == "y"
        elif name in ("separator", "aggregator") and value:
            setattr(options, name, {"/t": "\t", "/s": " "}.get(value, value))
        elif name == "occurrence" and value in ("a", "f", "l"):
            options.occurrence = value
        elif name == "quote" and value in ("d", "s", "n"):
            options.quote = {"d": '"', "s": "'", "n": ""}[value]
        else:
            raise FieldsError(f"-E {setting}: use header=y|n, separator=/t|/s|CHAR, aggregator=,|/s|CHAR, "
                              "occurrence=a|f|l or quote=d|s|n")
    return options


def check_names(names: List[str]):
    for name in names:
        if name not in FIELDS:
            close = WIRESHARK_NAMES.get(name.lower()) or next(iter(get_close_matches(name, FIELDS, n=1)), None)
            hint = f"did you mean {close}?" if close else f"the fields: {', '.join(FIELDS)}"
            raise FieldsError(f"-e {name}: unknown field ({hint})")


def header_line(names: List[str], options: FieldsOptions) -> str:
    return options.separator.join(names)


def fields_renderer(names: List[str], options: Optional[FieldsOptions] = None) -> Callable:
    """``render(record, file=None) -> str``: the record's line of the fields ``names``."""
    options = options or FieldsOptions()
    check_names(names)
    formats = [_formatter(name, options) for name in names]
    separator, quote = options.separator, options.quote

    def render(record, file=None):
        values = [format_value(record, file) for format_value in formats]
        if quote:
            values = [f"{quote}{value}{quote}" if value else value for value in values]
        return separator.join(values)
    return render


def _formatter(name, options):
    kind = FIELDS[name]
    if name == "file":
        return lambda record, file: file or ""
    if kind == SESSION_ID:
        def session_id(record, _file):
            value = field_value(record, name)
            return f"{value:016x}" if value.__class__ is int else ("" if value in (MISSING, None) else value)
        return session_id
    if kind == BOOL:
        return lambda record, _file: {True: "1", False: "0"}.get(field_value(record, name), "")
    if kind in (INTS, STRINGS):
        aggregator, occurrence = options.aggregator, options.occurrence

        def listed(record, _file):
            value = field_value(record, name)
            if value is MISSING or not value:
                return ""
            if occurrence != "a":
                value = value[:1] if occurrence == "f" else value[-1:]
            return aggregator.join(map(str, value))
        return listed
    def plain(record, _file):  # (numbers as --json writes them: str of an int or float is its repr)
        value = field_value(record, name)
        return "" if value is MISSING or value is None else str(value)
    return plain
