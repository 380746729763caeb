"""Release policy parsing (declarative JSON compiled to CEL) and evaluation."""

from __future__ import annotations

from typing import Any

import pytest

from layerseal.broker.policy import DEFAULT_POLICY, POLICY_BUDGET, Policy, evaluate
from layerseal.errors import BadInputError

M = "ab" * 48
CLAIMS: dict[str, Any] = {
    "tee": "sim",
    "measurement": M,
    "svn": 3,
    "debug": False,
    "sim": {"measurement": M, "svn": 3, "debug": False},
}


def pol(*conds: dict[str, Any]) -> Policy:
    return Policy.parse({"version": "1.0.0", "anyOf": [{"allOf": list(conds)}]})


def test_default_policy_needs_reference_measurement_and_refuses_sample_and_debug() -> None:
    refs = {"allowed-measurements": [M]}
    assert evaluate(DEFAULT_POLICY, CLAIMS, refs).allowed
    assert not evaluate(DEFAULT_POLICY, CLAIMS, {}).allowed
    debug = evaluate(DEFAULT_POLICY, {**CLAIMS, "debug": True}, refs)
    assert not debug.allowed and "debug equals false" in debug.reason and "debug = true" in debug.reason
    sample = {"tee": "sample", "measurement": "", "svn": 1, "debug": True, "sample": {"svn": 1}}
    assert 'tee notEquals "sample"' in evaluate(DEFAULT_POLICY, sample, refs).reason


@pytest.mark.parametrize(
    ("cond", "allowed"),
    [
        ({"claim": "sim.svn", "greaterOrEquals": 3}, True),
        ({"claim": "sim.svn", "greaterThan": 3}, False),
        ({"claim": "sim.svn", "lessOrEquals": 3}, True),
        ({"claim": "sim.svn", "lessThan": 3}, False),
        ({"claim": "sim.svn", "equals": 3}, True),
        ({"claim": "tee", "in": ["sim", "snp"]}, True),
        ({"claim": "tee", "notIn": ["sim"]}, False),
        ({"claim": "sim.nothing", "exists": True}, False),
        ({"claim": "sim.svn", "exists": True}, True),
        ({"claim": "sim.nothing", "exists": False}, True),
        ({"claim": "sim.nothing", "equals": 1}, False),  # missing claim: fails, never raises
        ({"claim": "sim.svn", "equals": "3"}, False),  # type mismatch: fails
        ({"cel": "claims.sim.svn * 2 == 6 && claims.tee.startsWith('si')"}, True),
    ],
)
def test_operators(cond: dict[str, Any], allowed: bool) -> None:
    assert evaluate(pol(cond), CLAIMS, {}).allowed is allowed


def test_any_of_groups_and_reason_names_each_failing_group() -> None:
    p = Policy.parse(
        {
            "version": "1.0.0",
            "anyOf": [
                {"allOf": [{"claim": "svn", "greaterOrEquals": 9}]},
                {"allOf": [{"claim": "measurement", "in": "refvalues:golden"}]},
            ],
        }
    )
    denied = evaluate(p, CLAIMS, {"golden": ["00" * 48]})
    assert not denied.allowed and len(denied.failed) == 2
    assert "anyOf[0]" in denied.reason and "anyOf[1]" in denied.reason
    assert evaluate(p, CLAIMS, {"golden": [M]}).allowed


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"version": "2.0.0", "anyOf": [{"allOf": [{"claim": "tee", "equals": "sim"}]}]},
        {"version": "1.0.0", "anyOf": []},
        {"version": "1.0.0", "anyOf": [{"allOf": []}]},
        {"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "tee"}]}]},
        {"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "tee", "matches": "x"}]}]},
        {"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "a b", "equals": 1}]}]},
        {"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "tee", "in": "refvalues:"}]}]},
        {"version": "1.0.0", "anyOf": [{"allOf": [{"cel": "claims.tee =="}]}]},
        {"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "tee", "equals": 1.5}]}]},
        "not json",
    ],
)
def test_malformed_policies_are_rejected(doc: Any) -> None:
    with pytest.raises(BadInputError):
        Policy.parse(doc)


def test_digest_is_stable_and_content_sensitive() -> None:
    a = pol({"claim": "svn", "greaterOrEquals": 1})
    assert a.digest == pol({"claim": "svn", "greaterOrEquals": 1}).digest
    assert a.digest != pol({"claim": "svn", "greaterOrEquals": 2}).digest


NESTED = "[1,2,3,4,5,6,7,8,9,10]"
# five nested comprehensions in 159 characters: about 10^5 element visits
FREEZER = (
    f"{NESTED}.all(a, {NESTED}.all(b, {NESTED}.all(c, {NESTED}.all(d, {NESTED}.all(e, a+b+c+d+e > 0)))))"
)


def test_policy_over_the_cost_budget_is_refused_naming_the_budget() -> None:
    with pytest.raises(BadInputError) as info:
        pol({"cel": FREEZER})
    assert "budget" in str(info.value) and str(POLICY_BUDGET) in str(info.value)
    # one level of the same comprehension is cheap and accepted
    assert evaluate(pol({"cel": f"{NESTED}.all(a, a > 0)"}), CLAIMS, {}).allowed


def test_regular_expressions_are_refused_their_cost_is_unbounded() -> None:
    with pytest.raises(BadInputError, match="matches"):
        pol({"cel": "claims.measurement.matches('^(a|a)*b$')"})


def test_evaluation_stops_at_the_step_budget_when_claims_are_larger_than_estimated() -> None:
    # statically cheap (one comprehension over a claim), but the claim holds 20,000 items
    p = pol({"cel": "claims.big.all(x, x >= 0 && x < 100000)"})
    decision = evaluate(p, {**CLAIMS, "big": list(range(20000))}, {})
    assert not decision.allowed
    assert "budget" in decision.reason
