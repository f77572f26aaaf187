"""Flex Consumption refuses classic site properties and settings; these checks keep them out of the templates.

A Flex Consumption app that sets `siteConfig.ftpsState`, `linuxFxVersion` or the worker-runtime settings fails
to deploy (or is silently reconfigured): `functionAppConfig` replaces them. The checks read the same parse trees
as tests/infra/test_bicep.py (its helpers are imported, not copied), and one test proves the checker itself
finds each refused property in a template that sets it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.test_bicep import BICEP, BICEP_FILES, DEPLOY_DOC, MAIN, body, decorators, tree, walk

# siteConfig properties Flex Consumption rejects (the runtime, bitness and scaling come from functionAppConfig).
REFUSED_SITE_CONFIG = {
    "ftpsState",
    "use32BitWorkerProcess",
    "netFrameworkVersion",
    "functionsRuntimeScaleMonitoringEnabled",
    "linuxFxVersion",
}
# App settings Flex Consumption rejects: functionAppConfig.runtime names the worker and the host version.
REFUSED_APP_SETTINGS = {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION"}
PARAMETERS = BICEP / "main.parameters.json"


def _keys(node: Any) -> set[str]:
    """Every literal object key of a parse-tree value (nested objects and union() operands included)."""
    return {key for item in walk(node) if isinstance(item, dict) for key in item if isinstance(key, str)}


def _names(node: Any) -> set[str]:
    """Every literal `name:` value of a parse-tree value: app settings in their `{name, value}` list form."""
    return {item["name"] for item in walk(node) if isinstance(item, dict) and isinstance(item.get("name"), str)}


def _refused_values(value: Any) -> set[str]:
    """What a variable or parameter value holds that Flex refuses: site properties and app settings as keys, and
    app settings as `{name, value}` entries."""
    return (_keys(value) & (REFUSED_SITE_CONFIG | REFUSED_APP_SETTINGS)) | (_names(value) & REFUSED_APP_SETTINGS)


def flex_violations(parsed: dict[str, Any]) -> list[str]:
    """What a parsed template sets that Flex Consumption refuses, as 'resource: property' lines."""
    found: list[str] = []
    for name, resource in parsed.get("resources", {}).items():
        if resource.get("existing"):
            continue
        kind = resource["type"].lower()
        config = body(resource["config"])
        properties = config.get("properties")
        if kind == "microsoft.web/sites" and isinstance(properties, dict):
            site_config = properties.get("siteConfig", {})
            found += [f"{name}: siteConfig.{key}" for key in sorted(_keys(site_config) & REFUSED_SITE_CONFIG)]
            settings = site_config.get("appSettings", []) if isinstance(site_config, dict) else []
            named = {item.get("name") for item in settings if isinstance(item, dict)}
            found += [f"{name}: appSettings {key}" for key in sorted(named & REFUSED_APP_SETTINGS)]
        elif kind == "microsoft.web/sites/config":
            refused = REFUSED_SITE_CONFIG if config.get("name") == "web" else REFUSED_APP_SETTINGS
            found += [f"{name}: {key}" for key in sorted(_keys(properties) & refused)]
    # Values held in variables and parameter defaults reach siteConfig or appsettings by reference or through
    # union(), where the resource shows only the name: look there too, for both kinds.
    for section in ("variables", "parameters"):
        for name, declaration in parsed.get(section, {}).items():
            value = declaration.get("value", declaration.get("default"))
            found += [f"{section[:-1]} {name}: {key}" for key in sorted(_refused_values(value))]
    return found


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(BICEP)))
def test_no_template_sets_what_flex_consumption_refuses(path: Path) -> None:
    assert flex_violations(tree(path)) == []


def test_the_parameters_file_sets_no_refused_setting() -> None:
    given = json.loads(PARAMETERS.read_text(encoding="utf-8"))["parameters"]
    found = {name: sorted(_refused_values(entry.get("value"))) for name, entry in given.items()}
    assert {name: keys for name, keys in found.items() if keys} == {}


def test_the_checker_finds_every_refused_property(tmp_path: Path) -> None:
    """Guards the checks above: a template setting each refused property is caught, property by property."""
    site_config = "\n".join(f"      {key}: 'x'" for key in sorted(REFUSED_SITE_CONFIG))
    settings = "\n".join(f"      {{ name: '{key}', value: 'x' }}" for key in sorted(REFUSED_APP_SETTINGS))
    config_settings = "\n".join(f"    {key}: 'x'" for key in sorted(REFUSED_APP_SETTINGS))
    template = tmp_path / "bad.bicep"
    template.write_text(
        f"""param location string = 'westeurope'

resource site 'Microsoft.Web/sites@2024-04-01' = {{
  name: 'bad'
  location: location
  properties: {{
    siteConfig: {{
{site_config}
      appSettings: [
{settings}
      ]
    }}
  }}
}}

resource web 'Microsoft.Web/sites/config@2024-04-01' = {{
  parent: site
  name: 'web'
  properties: {{
    linuxFxVersion: 'Python|3.13'
  }}
}}

resource appsettings 'Microsoft.Web/sites/config@2024-04-01' = {{
  parent: site
  name: 'appsettings'
  properties: {{
{config_settings}
  }}
}}
""",
        encoding="utf-8",
    )
    found = flex_violations(tree(template))
    assert {line.split(".")[-1] for line in found if line.startswith("site: siteConfig.")} == REFUSED_SITE_CONFIG
    assert {line.split()[-1] for line in found if line.startswith("site: appSettings")} == REFUSED_APP_SETTINGS
    assert "web: linuxFxVersion" in found
    assert {line.split()[-1] for line in found if line.startswith("appsettings:")} == REFUSED_APP_SETTINGS


def test_the_checker_finds_refused_properties_held_in_variables_and_parameters(tmp_path: Path) -> None:
    """A site whose siteConfig or app settings come from a variable or a parameter shows only a reference; the
    refused properties are caught where they are written, in every form they can take there."""
    site_config = "\n".join(f"  {key}: 'x'" for key in sorted(REFUSED_SITE_CONFIG))
    settings_object = "\n".join(f"  {key}: 'x'" for key in sorted(REFUSED_APP_SETTINGS))
    settings_list = "\n".join(f"  {{ name: '{key}', value: 'x' }}" for key in sorted(REFUSED_APP_SETTINGS))
    template = tmp_path / "indirect.bicep"
    template.write_text(
        f"""param siteConfigParam object = {{
{site_config}
}}

var siteConfigVar = {{
{site_config}
}}

var settingsObject = {{
{settings_object}
}}

var settingsList = [
{settings_list}
]

resource site 'Microsoft.Web/sites@2024-04-01' = {{
  name: 'bad'
  location: 'westeurope'
  properties: {{
    siteConfig: union(siteConfigVar, siteConfigParam, {{ appSettings: settingsList }})
  }}
}}

resource appsettings 'Microsoft.Web/sites/config@2024-04-01' = {{
  parent: site
  name: 'appsettings'
  properties: settingsObject
}}
""",
        encoding="utf-8",
    )
    found = flex_violations(tree(template))

    def keys(prefix: str) -> set[str]:
        return {line.split()[-1] for line in found if line.startswith(prefix)}

    assert keys("parameter siteConfigParam:") == REFUSED_SITE_CONFIG
    assert keys("variable siteConfigVar:") == REFUSED_SITE_CONFIG
    assert keys("variable settingsObject:") == REFUSED_APP_SETTINGS
    assert keys("variable settingsList:") == REFUSED_APP_SETTINGS


# ------------------------------------------------------------------------------------------------------------------
# The developer's role assignments follow the kind of principal azd runs as
# ------------------------------------------------------------------------------------------------------------------


def test_principal_type_comes_from_azd() -> None:
    """azd sets AZURE_PRINCIPAL_TYPE (ServicePrincipal in CI); a User-typed assignment to a service principal fails."""
    given = json.loads(PARAMETERS.read_text(encoding="utf-8"))["parameters"]
    assert re.fullmatch(r"\$\{AZURE_PRINCIPAL_TYPE(=User)?\}", given["principalType"]["value"])
    declared = tree(MAIN)["parameters"]["principalType"]
    assert {"User", "ServicePrincipal"} <= set(decorators(declared)["allowed"])
    assert declared["default"] == "User"
    assert "AZURE_PRINCIPAL_TYPE" in DEPLOY_DOC.read_text(encoding="utf-8")


def test_every_developer_role_assignment_uses_the_principal_type() -> None:
    developer_modules = {}
    for name, module in tree(MAIN)["modules"].items():
        params = body(module["config"]).get("params", {})
        if params.get("principalId") == "principalId":
            developer_modules[name] = params.get("principalType")
    assert len(developer_modules) >= 2, f"expected the developer's role modules, found {sorted(developer_modules)}"
    wrong = {name: value for name, value in developer_modules.items() if value != "principalType"}
    assert not wrong, f"modules granting the developer roles must pass principalType: principalType, not {wrong}"
