"""Sample Functions app for the development host tests (same stack as the gateway: FastAPI types).

Every function answers with what it saw, so tests can check what the host passed in.
"""

import asyncio
import os

import azure.functions as func
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response, StreamingResponse

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def describe(req: Request, function: str, **extra: object) -> JSONResponse:
    return JSONResponse(
        {
            "function": function,
            "method": req.method,
            "path": req.url.path,
            "path_params": dict(req.path_params),
            "query": dict(req.query_params),
            **extra,
        }
    )


# Registered before the literal route below on purpose: the host must still prefer the literal.
@app.route(route="items/{item_id}", methods=["GET"])
async def get_item(req: Request) -> JSONResponse:
    return describe(req, "get_item")


@app.route(route="items/special", methods=["GET"])
async def get_special_item(req: Request) -> JSONResponse:
    return describe(req, "get_special_item")


@app.route(route="files/{*rest}", methods=["GET"])
async def get_file(req: Request) -> JSONResponse:
    return describe(req, "get_file")


@app.route(route="numbers/{n:int}", methods=["GET"])
async def get_number(req: Request) -> JSONResponse:
    return describe(req, "get_number")


@app.route(route="greet/{name?}", methods=["GET"])
async def greet(req: Request) -> JSONResponse:
    return describe(req, "greet")


@app.route(route="echo/{name}", methods=["POST"])
async def echo(req: Request) -> JSONResponse:
    body = await req.body()
    return describe(req, "echo", body=body.decode())


@app.route(route="secure", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def secure(req: Request) -> JSONResponse:
    return describe(req, "secure")


@app.route(route="settings/{name}", methods=["GET"])
async def get_setting(req: Request) -> JSONResponse:
    name = req.path_params["name"]
    if not name.startswith("SAMPLE_"):  # only echo the sample's own settings
        return JSONResponse({"error": "only SAMPLE_* settings"}, status_code=400)
    return JSONResponse({"name": name, "value": os.environ.get(name)})


@app.route(route="boom", methods=["GET"])
async def boom(req: Request) -> Response:
    raise RuntimeError("sample secret: this text must never reach the client")


@app.route(route="sync", methods=["GET"])
def sync_function(req: Request) -> JSONResponse:
    return describe(req, "sync_function")


# Streaming: the second chunk is produced only after a client calls POST release/{token}.
_gates: dict[str, asyncio.Event] = {}


def _gate(token: str) -> asyncio.Event:
    return _gates.setdefault(token, asyncio.Event())


@app.route(route="stream/{token}", methods=["GET"])
async def stream(req: Request) -> StreamingResponse:
    gate = _gate(req.path_params["token"])

    async def chunks():
        yield b"first\n"
        await gate.wait()
        yield b"second\n"

    return StreamingResponse(chunks(), media_type="text/plain")


@app.route(route="release/{token}", methods=["POST"])
async def release(req: Request) -> Response:
    _gate(req.path_params["token"]).set()
    return Response(status_code=204)
