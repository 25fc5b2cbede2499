"""Differential check: ieum must show the same normalized observations as Synapse.

Owns the comparison only. The scenarios (test_nio_*.py) record observations per
server in the session-wide store and normalize what the spec lets servers choose
(identifiers, timestamps, the error code for joining an unknown room; see the
comments at each normalization). This file runs last (pytest orders files by
name) and fails if a scenario did not run against both servers in this session.
"""

from __future__ import annotations

import json

import pytest

REFERENCE = "synapse"
CANDIDATE = "ieum"
SCENARIOS = ["nio_basic"]


def _flatten(value, prefix=""):
    """{'a': {'b': 1}} -> {'a.b': 1}, so differences are reported per leaf."""
    if isinstance(value, dict) and value:
        out = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _show(value, limit=400):
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _first_list_difference(a, b):
    if not (isinstance(a, list) and isinstance(b, list)):
        return ""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f" (first difference at index {i}: {_show(x, 120)} vs {_show(y, 120)})"
    if len(a) != len(b):
        return f" (lengths {len(a)} vs {len(b)})"
    return ""


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_observations_agree(scenario, observations):
    recorded = observations.by_scenario.get(scenario, {})
    missing = [s for s in (REFERENCE, CANDIDATE) if s not in recorded]
    if missing:
        pytest.fail(
            f"scenario {scenario!r} did not run against {', '.join(missing)} in this "
            f"session, so there is nothing to compare; run the whole suite",
            pytrace=False,
        )
    reference = _flatten(recorded[REFERENCE])
    candidate = _flatten(recorded[CANDIDATE])
    if not recorded[REFERENCE].get("completed"):
        pytest.fail(f"scenario {scenario!r} did not pass against {REFERENCE}: the "
                    f"reference itself is untrusted, see its failure above", pytrace=False)

    differences = []
    unreached = sorted(set(reference) - set(candidate))
    if unreached and not recorded[CANDIDATE].get("completed"):
        # The candidate's scenario failed part-way (its own failure says why);
        # list what it never reached in one line and compare what it did reach.
        differences.append(
            f"  {len(unreached)} observation(s) never reached by {CANDIDATE}: its scenario "
            f"stopped after steps {recorded[CANDIDATE].get('steps')}, see its failure above"
        )
        reference = {k: v for k, v in reference.items() if k in candidate}
    for key in sorted(set(reference) | set(candidate)):
        ref = reference.get(key, "<missing>")
        cand = candidate.get(key, "<missing>")
        if ref != cand:
            differences.append(
                f"  {key}{_first_list_difference(ref, cand)}\n"
                f"    {REFERENCE}: {_show(ref)}\n"
                f"    {CANDIDATE}: {_show(cand)}"
            )
    if differences:
        pytest.fail(
            f"{len(differences)} observation(s) of {scenario!r} differ between "
            f"{REFERENCE} and {CANDIDATE}:\n" + "\n".join(differences),
            pytrace=False,
        )
