"""A small data-science workflow run inside a worker, through the enhanced bridge.

    python examples/data_science_workflow.py

Standard library only (csv, io, statistics, operator): the data is generated here with a
seeded random.Random, shipped as CSV text, parsed and kept in the worker's per-session object
store, then described, fitted with statistics.linear_regression, queried with stored
programs, inspected, and deleted.

The enhanced bridge runs any Python code the caller names (docs/enhanced-bridge.md): it is
opt-in, for trusted callers only. Objects live in one worker, so the pool uses
affinity="strict" to send every call of the session there.
"""

import csv
import io
import random
from typing import Any

import trio

import snakepit_trio as sp

SESSION = "analysis-1"
TRUE_SLOPE, TRUE_INTERCEPT = 3.0, 5.0


def make_csv(n: int, seed: int = 42) -> str:
    """``n`` rows of x, y = 3x + 5 + noise, and a category, as CSV text."""
    rng = random.Random(seed)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["x", "y", "group"])
    for _ in range(n):
        x = rng.uniform(0, 10)
        y = TRUE_SLOPE * x + TRUE_INTERCEPT + rng.gauss(0, 1.5)
        writer.writerow([f"{x:.3f}", f"{y:.3f}", rng.choice("abc")])
    return out.getvalue()


def column(name: str, convert: str = "float") -> dict[str, Any]:
    """A pipeline that pulls one column out of the stored table and keeps it as ``name``."""
    return {
        "steps": [
            {"name": "get", "target": "operator:itemgetter", "args": [name]},
            {"name": "raw", "target": "map", "args": [{"$ref": "get"}, {"$ref": "table"}]},
            {"name": "typed", "target": "map", "args": [{"$import": convert}, {"$ref": "raw"}]},
            {"target": "list", "args": [{"$ref": "typed"}], "store_as": name},
        ]
    }


# A global program: descriptive statistics of whichever stored column is the input.
STATISTICS = {
    "mean": "statistics:fmean",
    "median": "statistics:median",
    "stdev": "statistics:stdev",
    "min": "min",
    "max": "max",
    "quartiles": "statistics:quantiles",
}
DESCRIBE = {
    "steps": [
        {"name": name, "target": target, "args": [{"$ref": {"$input": "column"}}]}
        for name, target in STATISTICS.items()
    ],
    "output": list(STATISTICS),
}

# A session program: predict y for an input x with the fitted line.
PREDICT = {
    "steps": [
        {
            "name": "scaled",
            "target": "operator:mul",
            "args": [{"$ref": "fit.slope"}, {"$input": "x"}],
        },
        {
            "name": "y",
            "target": "operator:add",
            "args": [{"$ref": "scaled"}, {"$ref": "fit.intercept"}],
        },
    ]
}


def show(title: str, value: object) -> None:
    print(f"{title:<24} {value}")


async def main() -> None:
    config = sp.PoolConfig(affinity="strict")
    async with sp.open_pool(sp.PythonAdapter(enhanced=True), size=2, config=config) as pool:

        async def run(command: str, args: dict[str, Any] | None = None) -> Any:
            return await pool.execute_in_session(SESSION, command, args)

        print("== load")
        text = make_csv(200)
        loaded = await run(
            "pipeline",
            {
                "steps": [
                    {"name": "buffer", "target": "io:StringIO", "args": [text]},
                    {"name": "reader", "target": "csv:DictReader", "args": [{"$ref": "buffer"}]},
                    {"target": "list", "args": [{"$ref": "reader"}], "store_as": "table"},
                ]
            },
        )
        show("table", loaded["result"]["stored"])
        for name in ("x", "y"):
            await run("pipeline", column(name))
        await run("pipeline", column("group", convert="str"))
        first = await run("retrieve", {"name": "table.0"})
        show("first row", first["value"])

        print("== describe")
        sp.create_global_program(pool, "describe", DESCRIBE)
        for name in ("x", "y"):
            stats = (await sp.execute_program(pool, SESSION, "describe", {"column": name}))[
                "result"
            ]
            show(
                f"{name}",
                f"mean {stats['mean']:.2f}  median {stats['median']:.2f}  "
                f"stdev {stats['stdev']:.2f}  range [{stats['min']:.2f}, {stats['max']:.2f}]  "
                f"quartiles {', '.join(f'{q:.2f}' for q in stats['quartiles'])}",
            )
        counts = await run("call", {"target": "collections:Counter", "args": [{"$ref": "group"}]})
        show("groups", dict(sorted(counts["result"].items())))

        print("== regression")
        await run(
            "call",
            {
                "target": "statistics:linear_regression",
                "args": [{"$ref": "x"}, {"$ref": "y"}],
                "store_as": "fit",
            },
        )
        fit = (await run("retrieve", {"name": "fit"}))["value"]
        show("fit", f"y = {fit['slope']:.3f} x + {fit['intercept']:.3f}")
        show("true line", f"y = {TRUE_SLOPE:.3f} x + {TRUE_INTERCEPT:.3f}")
        r = (
            await run(
                "call", {"target": "statistics:correlation", "args": [{"$ref": "x"}, {"$ref": "y"}]}
            )
        )["result"]
        show("correlation, r^2", f"{r:.4f}, {r * r:.4f}")

        sp.create_program(pool, SESSION, "predict", PREDICT)
        for x in (0, 2.5, 10):
            y = (await sp.execute_program(pool, SESSION, "predict", {"x": x}))["result"]
            show(f"predict(x={x})", f"{y:.3f}")

        print("== objects that stay in the worker")
        # A NormalDist cannot cross the wire: returned, it comes back as a description...
        reply = await run(
            "call", {"target": "statistics:NormalDist.from_samples", "args": [{"$ref": "y"}]}
        )
        show("NormalDist returned", reply["result"])
        # ...stored, it stays whole, and its methods can be called in place.
        await run(
            "call",
            {
                "target": "statistics:NormalDist.from_samples",
                "args": [{"$ref": "y"}],
                "store_as": "dist",
            },
        )
        cdf = await run("call", {"object": "dist", "method": "cdf", "args": [30.0]})
        show("P(y <= 30)", f"{cdf['result']:.3f}")
        info = await run("inspect", {"name": "dist", "max_repr": 60})
        show("inspect dist", f"{info['type']}: {info['repr']}")
        show("  attributes", ", ".join(info["attributes"][:6]) + ", ...")

        print("== clean up")
        listing = await run("list_stored")
        show("stored", ", ".join(f"{o['name']} ({o['type']})" for o in listing["objects"]))
        deleted = await run("delete_stored", {"all": True})
        show("deleted", ", ".join(deleted["deleted"]))
        show("left", (await run("list_stored"))["count"])
        pool.sessions.delete_session(SESSION)


if __name__ == "__main__":
    trio.run(main)
