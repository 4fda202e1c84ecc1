"""An error deep in the call graph reaches the caller with the whole chain.

Run: python examples/error_chain.py
"""

import asyncio
import json

import girder


@girder.function
def divide(x: float, y: float) -> float:
    return x / y


@girder.function
async def ratio(i: int) -> float:
    (value,) = await girder.call_reentrant([(divide, i, i - 1)])
    return value


@girder.function
async def portfolio(items: tuple[int, ...]) -> float:
    values = await girder.call_reentrant([(ratio, i) for i in items])
    return sum(values)


async def main() -> None:
    async with girder.Grid.local(workers=2) as grid:
        print("portfolio((2, 3, 5)) =", await grid.call(portfolio, (2, 3, 5)))
        try:
            await grid.call(portfolio, (2, 1, 5))
        except girder.RequestError as error:
            print("failed:", error)
            print("root cause:", error.root_causes()[0].request, error.root_causes()[0].message)
            shape = error.to_dict()
            shape["stack"] = shape["stack"][-1:]  # keep the printout short
            print(json.dumps(shape, indent=1)[:800])


if __name__ == "__main__":
    asyncio.run(main())
