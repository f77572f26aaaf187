"""Composition root: the gateway and its functions wired into one Functions app. No logic here."""

import azure.durable_functions as df
import azure.functions as func

from gateway.bootstrap import build_gateway
from gateway.errors import ConfigError
from gateway.http import build_blueprint
from gateway.misconfigured import build_misconfigured_blueprint
from orchestrations.blueprint import build_async_blueprint, starter_for

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
try:
    services = build_gateway()
except ConfigError as problem:  # still index: /health and every route say which setting to fix
    app.register_functions(build_misconfigured_blueprint(problem))
else:
    app.register_functions(build_blueprint(services, start_async=starter_for(services)))
    app.register_functions(build_async_blueprint(services))
