"""Composition root: the gateway and its functions wired into one Functions app. No logic here."""

import azure.durable_functions as df
import azure.functions as func

from gateway.bootstrap import build_gateway
from gateway.http import build_blueprint
from orchestrations.blueprint import build_async_blueprint, starter_for

# A wrong setting stops the app here, at start-up, with a message naming the setting.
services = build_gateway()

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(build_blueprint(services, start_async=starter_for(services)))
app.register_functions(build_async_blueprint(services))
