"""What bounding policy cost costs, and what it buys: event-loop lag during evaluations.

1. A normal release's decision (the default policy, three conditions) evaluated with the
   step-counting interpreter against celpy's plain one: the price of the bound.
2. The finding's 159-character policy of five nested comprehensions (refused now) timed
   with plain celpy, for scale.
3. Loop lag: a probe coroutine wakes every millisecond while 16 evaluations of an accepted
   policy at the budget's edge run (a) on the event loop as before, (b) on threads, (c)
   through the broker's ``PolicyRunner`` processes.  The worst lag is what every other
   tenant's request waits: threads do not help (the GIL), processes do.

    .venv/bin/python bench/broker_load_policy.py
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import celpy
from celpy.adapter import json_to_cel

ROOT = Path(__file__).resolve().parent.parent

from layerseal.broker import policy  # noqa: E402
from layerseal.broker.service import PolicyRunner  # noqa: E402
from layerseal.broker.store import TenantRules  # noqa: E402

M = "ab" * 48
CLAIMS = {"tee": "sim", "measurement": M, "svn": 3, "debug": False, "sim": {"measurement": M, "svn": 3}}
REFS = {"allowed-measurements": [M]}
N10 = "[1,2,3,4,5,6,7,8,9,10]"
FREEZER = f"{N10}.all(a, {N10}.all(b, {N10}.all(c, {N10}.all(d, {N10}.all(e, a+b+c+d+e > 0)))))"
# accepted: estimated just under the budget (two nested comprehensions over 10 + 20 items)
EDGE = f"{N10}.all(a, {N10}.all(b, a + b > 0)) && {N10}.all(a, {N10}.all(b, a * b > 0))"


def _time(fn: Any, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def price_of_the_bound() -> dict[str, Any]:
    bounded = _time(lambda: policy.evaluate(policy.DEFAULT_POLICY, CLAIMS, REFS), 300)
    env = celpy.Environment()
    progs = [env.program(env.compile(c.cel)) for g in policy.DEFAULT_POLICY.groups for c in g]
    operands = [c.operand for g in policy.DEFAULT_POLICY.groups for c in g]

    def plain() -> None:
        act = {"claims": json_to_cel(CLAIMS), "refvalues": json_to_cel(REFS)}
        for prog, operand in zip(progs, operands, strict=True):
            a = dict(act)
            if operand is not None:
                a["operand"] = json_to_cel(operand)
            prog.evaluate(a)

    unbounded = _time(plain, 300)
    return {
        "default_policy_bounded_us": round(bounded * 1e6, 1),
        "default_policy_plain_us": round(unbounded * 1e6, 1),
    }


def freezer_time() -> float:
    env = celpy.Environment()
    prog = env.program(env.compile(FREEZER.replace(N10, "[1,2,3,4,5,6]")))  # 6^5, not 10^5: keep it short
    t0 = time.perf_counter()
    prog.evaluate({})
    return (time.perf_counter() - t0) * (10 / 6) ** 5


async def _lag_while(work: Any) -> dict[str, float]:
    lags: list[float] = []
    done = False

    async def probe() -> None:
        while not done:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t0 - 0.001)

    task = asyncio.create_task(probe())
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - t0
    done = True
    await task
    return {
        "work_s": round(elapsed, 3),
        "lag_max_ms": round(max(lags) * 1000, 2),
        "lag_p50_ms": round(statistics.median(lags) * 1000, 2),
    }


def loop_lag() -> dict[str, Any]:
    edge = policy.Policy.parse({"version": "1.0.0", "anyOf": [{"allOf": [{"cel": EDGE}]}]})
    rules = TenantRules(1, {}, {})

    async def on_loop() -> None:
        for _ in range(16):
            policy.evaluate(edge, CLAIMS, {})
            await asyncio.sleep(0)

    async def threads() -> None:
        await asyncio.gather(*(asyncio.to_thread(policy.evaluate, edge, CLAIMS, {}) for _ in range(16)))

    async def processes() -> None:
        runner = PolicyRunner(deadline=60)
        await asyncio.gather(*(runner.decide({("p", str(i)): (edge, rules)}, CLAIMS) for i in range(16)))

    async def warm() -> None:  # start the evaluation processes before measuring
        await PolicyRunner(deadline=60).decide({("p", "w"): (edge, rules)}, CLAIMS)

    asyncio.run(warm())
    return {
        "edge_policy_cost": sum(c.cost for g in edge.groups for c in g),
        "on_loop": asyncio.run(_lag_while(on_loop)),
        "threads": asyncio.run(_lag_while(threads)),
        "policy_processes": asyncio.run(_lag_while(processes)),
    }


def main() -> int:
    results = {"price": price_of_the_bound(), "freezer_plain_s_estimated": round(freezer_time(), 2)}
    results["loop_lag"] = loop_lag()
    try:
        policy.Policy.parse({"version": "1.0.0", "anyOf": [{"allOf": [{"cel": FREEZER}]}]})
        results["freezer_refused"] = False
    except Exception as exc:  # the point: it is refused
        results["freezer_refused"] = str(exc)
    p = results["price"]
    lag = results["loop_lag"]
    w = 62
    print(f"{'measure':<{w}} {'value':>12}")
    print(f"{'default policy decision, step-counted (us)':<{w}} {p['default_policy_bounded_us']:>12}")
    print(f"{'default policy decision, plain celpy (us)':<{w}} {p['default_policy_plain_us']:>12}")
    freezer = results["freezer_plain_s_estimated"]
    print(f"{'5-nested policy of the finding, plain celpy (s, est.)':<{w}} {freezer:>12}")
    for name, label in (
        ("on_loop", "on the loop"),
        ("threads", "2 threads"),
        ("policy_processes", "processes"),
    ):
        row = lag[name]
        text = f"16 edge-of-budget evaluations, {label}: worst loop lag (ms)"
        print(f"{text:<{w}} {row['lag_max_ms']:>12}   (p50 {row['lag_p50_ms']} ms, {row['work_s']} s)")
    print(f"5-nested policy now: {results['freezer_refused']}")
    out = ROOT / "bench" / "results" / "broker_load_policy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
