"""A check Outcome as monitoring-plugin output: one status line with perfdata
after ``|``, then (with -v) the detail lines."""

from ..monitoring import Outcome


def plugin_output(outcome: Outcome, verbose: bool = False) -> str:
    # "|" starts perfdata for the monitoring system: keep it out of the text.
    message = outcome.message.replace("|", "/").replace("\n", " ")
    first = f"OPENVPN {outcome.state_name} - {message}"
    if outcome.perfdata:
        first += " | " + " ".join(outcome.perfdata)
    lines = [first]
    if verbose:
        lines += [line.replace("|", "/") for line in outcome.details]
    return "\n".join(lines)
