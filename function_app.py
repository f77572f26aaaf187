"""Composition root: settings, the gateway and its functions wired into one Functions app. No logic here."""

import azure.durable_functions as df
import azure.functions as func

from gateway.config import load_settings
from gateway.http import build_blueprint
from gateway.pipeline import Gateway

# A wrong setting stops the app here, at start-up, with a message naming the setting.
gateway = Gateway(load_settings())

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(build_blueprint(gateway))
