"""local.settings.sample.json stays true to the code: every GATEWAY_* value is known and valid."""

import json
from pathlib import Path

from gateway.config import SETTINGS, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_sample_settings_load_and_list_every_setting():
    values = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    settings = load_settings(values)
    assert settings.api_keys and not settings.auth_disabled  # a dev key, not GATEWAY_AUTH=none
    missing = sorted(name for name in SETTINGS if name.startswith("GATEWAY_") and name not in values)
    assert missing == [], "add these to local.settings.sample.json (with their defaults)"


def test_every_setting_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    undocumented = sorted(name for name in SETTINGS if f"`{name}`" not in readme)
    assert undocumented == []
