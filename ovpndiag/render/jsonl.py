"""JSON Lines: one object per OpenVPN packet (or per session), keys as in README."""

import json

_dumps = json.JSONEncoder(separators=(", ", ": "), ensure_ascii=True).encode


def packet_json(record: dict, file: str = None) -> str:
    data = {key: value for key, value in record.items() if key[0] != "_"}
    if file is not None:
        data["file"] = file
    return _dumps(data)


def session_json(summary: dict) -> str:
    return _dumps(summary)
