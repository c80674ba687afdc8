"""The names and types the runtime shares with the training package (which re-exports them): the
exit rules, the fallbacks and the type of every JSON document. No numpy: the command line's
``--help`` imports this."""

from __future__ import annotations

from typing import TypeAlias

# exit rules and what an input no IC lets out gets (exit_rule carries them out)
EXIT_RULES = ("max_softmax", "entropy", "patience")
FALLBACKS = ("most_confident", "final")

# What JSON files hold once parsed, and what every ``to_json`` returns: the type of the tool's
# serialised documents (run.json, report.json, calibration.json, manifests, safetensors metadata).
JSONValue: TypeAlias = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]
JSONObject: TypeAlias = dict[str, JSONValue]
