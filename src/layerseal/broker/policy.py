"""Release policies: declarative JSON (in the spirit of Azure SKR) compiled to CEL.

Format::

    {"version": "1.0.0",
     "anyOf": [                                  # released if any group holds
       {"allOf": [                               # a group holds if every condition holds
          {"claim": "sim.measurement", "in": "refvalues:allowed-measurements"},
          {"claim": "debug", "equals": false},
          {"claim": "svn", "greaterOrEquals": 2},
          {"cel": "claims.tee == 'sim' && size(claims.measurement) == 96"}]}]}

A condition names a claim by dotted path (``tee``, ``measurement``, ``svn``, ``debug`` or
``<tee>.<field>``) and one operator: ``equals``, ``notEquals``, ``in``, ``notIn``,
``greaterThan``, ``greaterOrEquals``, ``lessThan``, ``lessOrEquals`` or ``exists``; ``in``
and ``notIn`` take a JSON array or ``"refvalues:<name>"`` (the tenant's reference values
of that name).  ``{"cel": "..."}`` is a raw CEL expression over ``claims`` and
``refvalues``.  Every condition is compiled into one CEL expression evaluated by celpy;
a missing claim or a type mismatch makes the condition fail (never the request).

Cost is bounded twice, because a tenant's policy runs on the broker every tenant shares
(five nested comprehensions held the event loop for seconds):

- statically, when a policy is parsed (set or loaded): every tree node costs one step and
  a comprehension costs its range times its body, the range being a literal list's length
  or :data:`ASSUMED_RANGE` for lists that come from claims or reference values.  Policies
  estimated above :data:`POLICY_BUDGET` steps are refused, and so is ``matches`` (Python
  regular expressions backtrack without bound);
- at run time, an evaluation counts the nodes it visits and fails once it passes
  :data:`STEP_LIMIT` (a claim list longer than assumed), denying the release.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import celpy
import lark
from celpy.adapter import json_to_cel
from celpy.celtypes import BoolType
from celpy.evaluation import Evaluator

from layerseal.errors import BadInputError
from layerseal.wire.jsonload import loads

VERSION = "1.0.0"
REFVALUES_PREFIX = "refvalues:"
_CLAIM_SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_REF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CEL_OPS = {
    "equals": "==",
    "notEquals": "!=",
    "greaterThan": ">",
    "greaterOrEquals": ">=",
    "lessThan": "<",
    "lessOrEquals": "<=",
}
_OPERATORS = (*_CEL_OPS, "in", "notIn", "exists")
_MAX_CONDITIONS = 64
POLICY_BUDGET = 10_000  # estimated steps (tree nodes visited) per policy, summed over conditions
STEP_LIMIT = 2 * POLICY_BUDGET  # steps one evaluation may take (a claim list may exceed ASSUMED_RANGE)
ASSUMED_RANGE = 64  # elements of a list whose length is not known before evaluation
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter", "reduce", "min"})
_REFUSED_FUNCTIONS = frozenset({"matches"})

DEFAULT_POLICY_DOCUMENT: dict[str, Any] = {
    "version": VERSION,
    "anyOf": [
        {
            "allOf": [
                {"claim": "tee", "notEquals": "sample"},
                {"claim": "debug", "equals": False},
                {"claim": "measurement", "in": "refvalues:allowed-measurements"},
            ]
        }
    ],
}


def _check_operand(value: Any, what: str, depth: int = 0) -> Any:
    if depth > 2:
        raise BadInputError(f"{what}: expected a flat JSON value, seen deep nesting")
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if abs(value) > 2**63 - 1:
            raise BadInputError(f"{what}: expected a 64-bit integer, seen {value}")
        return value
    if isinstance(value, list):
        if len(value) > 1024:
            raise BadInputError(f"{what}: expected at most 1024 items, seen {len(value)}")
        return [_check_operand(v, what, depth + 1) for v in value]
    raise BadInputError(f"{what}: expected a string, integer, boolean or array, seen {type(value).__name__}")


@dataclass(frozen=True)
class Condition:
    """One compiled condition: its CEL source and a readable description."""

    description: str
    cel: str
    claim: str | None = None
    operand: Any = None
    refvalues: str | None = None
    op: str = "cel"
    cost: int = 1
    label: str | None = None

    @property
    def name(self) -> str:
        """What a denied client is told: the claim and operator, never the operand."""
        if self.label is not None:
            return self.label
        return "cel expression" if self.claim is None else f"{self.claim} {self.op}"

    @classmethod
    def parse(cls, obj: Any, what: str) -> Condition:
        if not isinstance(obj, dict):
            raise BadInputError(f"{what}: expected an object, seen {type(obj).__name__}")
        if "cel" in obj:
            if set(obj) != {"cel"}:
                raise BadInputError(f"{what}: expected only 'cel', seen {sorted(obj)}")
            source = obj["cel"]
            if not isinstance(source, str) or not source.strip() or len(source) > 2000:
                raise BadInputError(f"{what}.cel: expected a CEL expression of 1-2000 characters")
            cost = estimate_cost(source, what)
            return cls(description=f"cel {source!r}", cel=source, cost=cost)
        claim = obj.get("claim")
        if not isinstance(claim, str) or not all(_CLAIM_SEGMENT.match(s) for s in claim.split(".")):
            raise BadInputError(f"{what}.claim: expected a dotted claim name like 'sim.svn', seen {claim!r}")
        ops = [k for k in obj if k != "claim"]
        if len(ops) != 1 or ops[0] not in _OPERATORS:
            raise BadInputError(
                f"{what}: expected 'claim' and one operator of {list(_OPERATORS)}, seen {ops}"
            )
        op = ops[0]
        operand = _check_operand(obj[op], f"{what}.{op}")
        path = "claims" + "".join(f"[{json.dumps(seg)}]" for seg in claim.split("."))
        refvalues = None
        if op == "exists":
            if not isinstance(operand, bool):
                raise BadInputError(f"{what}.exists: expected true or false, seen {operand!r}")
            head, _, last = path.rpartition("[")
            test = f"{last[:-1]} in {head}"
            cel = test if operand else f"!({test})"
            return cls(
                f"{claim} exists is {operand}", cel, claim, operand, op=op, cost=estimate_cost(cel, what)
            )
        if op in ("in", "notIn"):
            if isinstance(operand, str) and operand.startswith(REFVALUES_PREFIX):
                refvalues = operand[len(REFVALUES_PREFIX) :]
                if not _REF_NAME.match(refvalues):
                    raise BadInputError(f"{what}.{op}: expected 'refvalues:<name>', seen {operand!r}")
                target = f"refvalues[{json.dumps(refvalues)}]"
            elif isinstance(operand, list):
                target = "operand"
            else:
                raise BadInputError(f"{what}.{op}: expected an array or 'refvalues:<name>', seen {operand!r}")
            test = f"{path} in {target}"
            cel = test if op == "in" else f"!({test})"
        else:
            cel = f"{path} {_CEL_OPS[op]} operand"
        shown = operand if refvalues is None else f"{REFVALUES_PREFIX}{refvalues}"
        return cls(
            f"{claim} {op} {json.dumps(shown)}", cel, claim, operand, refvalues, op, estimate_cost(cel, what)
        )

    def observed(self, claims: Mapping[str, Any]) -> str:
        if self.claim is None:
            return "claims " + _short(claims)
        node: Any = claims
        for seg in self.claim.split("."):
            if not isinstance(node, Mapping) or seg not in node:
                return f"claim {self.claim} absent"
            node = node[seg]
        return f"{self.claim} = {_short(node)}"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


@dataclass(frozen=True)
class Policy:
    """A parsed policy: groups of conditions, any group suffices."""

    groups: tuple[tuple[Condition, ...], ...]
    document: Mapping[str, Any] = field(compare=False)
    digest: str = ""

    @classmethod
    def parse(cls, doc: Any) -> Policy:
        if isinstance(doc, str | bytes):
            doc = loads(doc, "policy")
        if not isinstance(doc, dict):
            raise BadInputError(f"policy: expected a JSON object, seen {type(doc).__name__}")
        if doc.get("version") != VERSION:
            raise BadInputError(f"policy version: expected {VERSION!r}, seen {doc.get('version')!r}")
        extra = set(doc) - {"version", "anyOf", "description"}
        if extra:
            raise BadInputError(f"policy: expected only version/anyOf/description, seen {sorted(extra)}")
        any_of = doc.get("anyOf")
        if not isinstance(any_of, list) or not any_of:
            raise BadInputError("policy anyOf: expected a non-empty array of {allOf:[...]} groups")
        groups: list[tuple[Condition, ...]] = []
        count = 0
        for i, group in enumerate(any_of):
            what = f"policy anyOf[{i}]"
            if not isinstance(group, dict) or not isinstance(group.get("allOf"), list) or not group["allOf"]:
                raise BadInputError(f"{what}: expected {{'allOf': [conditions]}} with at least one condition")
            if set(group) - {"allOf", "description"}:
                raise BadInputError(f"{what}: expected only allOf/description, seen {sorted(group)}")
            conds = tuple(Condition.parse(c, f"{what}.allOf[{j}]") for j, c in enumerate(group["allOf"]))
            count += len(conds)
            groups.append(conds)
        if count > _MAX_CONDITIONS:
            raise BadInputError(f"policy: expected at most {_MAX_CONDITIONS} conditions, seen {count}")
        cost = sum(c.cost for g in groups for c in g)
        if cost > POLICY_BUDGET:
            raise BadInputError(
                f"policy: expected an estimated cost within the budget of {POLICY_BUDGET} steps, "
                f"seen {cost} (nested comprehensions multiply their ranges)"
            )
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return cls(tuple(groups), doc, hashlib.sha256(canonical.encode()).hexdigest())

    def refvalue_names(self) -> set[str]:
        return {c.refvalues for g in self.groups for c in g if c.refvalues is not None}


@dataclass(frozen=True)
class Decision:
    """A policy's verdict.  ``reason`` (with observed claim values and operands) is for the
    audit log; ``conditions`` names the failing conditions without their operands, which is
    all a denied client is told."""

    allowed: bool
    reason: str
    failed: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()


class _BudgetExceeded(Exception):
    """An evaluation passed :data:`STEP_LIMIT`."""


_STEPS = threading.local()


class _CountingEvaluator(Evaluator):
    """celpy's interpreter, counting the tree nodes it visits against the thread's budget."""

    def _visit_tree(self, tree: lark.Tree[Any]) -> Any:
        left: int = _STEPS.left
        if left <= 0:
            raise _BudgetExceeded
        _STEPS.left = left - 1
        return super()._visit_tree(tree)

    def sub_evaluator(self, ast: lark.Tree[Any]) -> Evaluator:  # macro bodies count too
        return _CountingEvaluator(ast, activation=self.activation)


class _CountingRunner(celpy.InterpretedRunner):
    def evaluate(self, context: Any) -> Any:
        return _CountingEvaluator(ast=self.ast, activation=self.new_activation()).evaluate(context)


_ENV = celpy.Environment(runner_class=_CountingRunner)
_PROGRAMS: dict[str, Any] = {}
_LOCK = threading.Lock()


def _compile(source: str, what: str) -> Any:
    try:
        return _ENV.compile(source)
    except Exception as exc:  # celpy raises parser-specific errors of several classes
        raise BadInputError(f"{what}: expected a valid CEL expression, seen {source[:80]!r} ({exc})") from exc


def _range(member: Any) -> int:
    """Elements a comprehension over *member* visits: known for list literals (and maps or
    filters of them), :data:`ASSUMED_RANGE` otherwise."""
    node = member
    while isinstance(node, lark.Tree):
        if node.data == "list_lit":
            items = node.children[0] if node.children else None
            return len(items.children) if isinstance(items, lark.Tree) else 0
        if node.data == "member_dot_arg":
            if str(node.children[1]) in ("map", "filter"):
                node = node.children[0]
                continue
            return ASSUMED_RANGE
        if node.data not in ("member", "primary", "paren_expr") or len(node.children) != 1:
            return ASSUMED_RANGE
        node = node.children[0]
    return ASSUMED_RANGE


def _cost(node: Any, what: str) -> int:
    if not isinstance(node, lark.Tree):
        return 0
    if node.data in ("member_dot_arg", "ident_arg", "dot_ident_arg"):
        name_at = 1 if node.data == "member_dot_arg" else 0
        name = str(node.children[name_at])
        if name in _REFUSED_FUNCTIONS:
            raise BadInputError(
                f"{what}: expected no {name}() (regular expressions have an unbounded cost), seen one"
            )
        if node.data == "member_dot_arg" and name in _MACROS:
            args = node.children[2]
            body = args.children[-1] if isinstance(args, lark.Tree) and args.children else None
            return 1 + _cost(node.children[0], what) + _range(node.children[0]) * (2 + _cost(body, what))
    return 1 + sum(_cost(child, what) for child in node.children)


def estimate_cost(source: str, what: str) -> int:
    """The static cost estimate of a CEL expression, in evaluation steps (see the module doc)."""
    return _cost(_compile(source, what), what)


def _program(source: str, what: str) -> Any:
    prog = _PROGRAMS.get(source)
    if prog is not None:
        return prog
    prog = _ENV.program(_compile(source, what))
    with _LOCK:
        if len(_PROGRAMS) > 4096:
            _PROGRAMS.clear()
        _PROGRAMS[source] = prog
    return prog


def _holds(cond: Condition, activation: dict[str, Any]) -> bool:
    prog = _program(cond.cel, cond.description)
    act = dict(activation)
    if cond.operand is not None:
        act["operand"] = json_to_cel(cond.operand)
    try:
        result = prog.evaluate(act)
    except _BudgetExceeded:
        raise
    except Exception:  # missing claim or type mismatch: the condition does not hold
        # celpy may have wrapped the budget error on its way out
        if _STEPS.left <= 0:
            raise _BudgetExceeded from None
        return False
    return isinstance(result, BoolType | bool) and bool(result)


def evaluate(policy: Policy, claims: Mapping[str, Any], refvalues: Mapping[str, Sequence[Any]]) -> Decision:
    """Decide whether *claims* satisfy *policy* given the tenant's reference values.

    At most :data:`STEP_LIMIT` steps are spent; a policy that needs more is a denial.
    """
    activation = {
        "claims": json_to_cel(dict(claims)),
        "refvalues": json_to_cel({name: list(refvalues.get(name, ())) for name in policy.refvalue_names()}),
    }
    failures: list[str] = []
    names: list[str] = []
    _STEPS.left = STEP_LIMIT
    for i, group in enumerate(policy.groups):
        for j, cond in enumerate(group):
            try:
                holds = _holds(cond, activation)
            except _BudgetExceeded:
                failures.append(
                    f"anyOf[{i}]: condition '{cond.description}' failed "
                    f"(evaluation passed the budget of {STEP_LIMIT} steps)"
                )
                names.append(f"anyOf[{i}].allOf[{j}] '{cond.name}' (over the evaluation budget)")
                return Decision(False, "; ".join(failures), tuple(failures), tuple(names))
            if not holds:
                failures.append(
                    f"anyOf[{i}]: condition '{cond.description}' failed ({cond.observed(claims)})"
                )
                names.append(f"anyOf[{i}].allOf[{j}] '{cond.name}'")
                break
        else:
            return Decision(True, f"anyOf[{i}] holds")
    return Decision(False, "; ".join(failures), tuple(failures), tuple(names))


def refusing_policy(document: str, reason: str) -> Policy:
    """A stand-in for a stored policy that no longer parses (e.g. over a budget introduced
    after it was set): it denies, and the audit log says why."""
    cond = Condition(f"stored policy is invalid ({reason})", "false", label="stored policy invalid")
    digest = hashlib.sha256(document.encode("utf-8", "replace")).hexdigest()
    return Policy(((cond,),), {"invalid": reason}, digest)


DEFAULT_POLICY = Policy.parse(DEFAULT_POLICY_DOCUMENT)
