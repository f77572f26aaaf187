"""floor-asgi: the minimal proxy of bench/floor_proxy.py as a Functions app, for the development host.

Served by ``python -m tests.support.devhost --app bench.floor_app.function_app`` with ``BENCH_UPSTREAM`` set,
so it runs on exactly the stack the gateway runs on there (uvicorn, the devhost's router and endpoint wrapper,
the FastAPI Request/Response types of the HTTP streaming extension).
"""

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from bench.floor_proxy import asgi_proxy, relay_from_env

relay = relay_from_env()
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="{*path}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def proxy(req: Request) -> Response:
    return await asgi_proxy(relay, req)
