"""Offline checks of the `azd up` infrastructure: azure.yaml, infra/bicep, and its settings contract with the code.

The Bicep compiler cannot be installed here, so every `.bicep` file is parsed with `pycep-parser` (a Lark grammar of
Bicep) and the checks read the parse trees: module wiring (paths, parameters, outputs), security properties, role
assignments, and the app settings of the Function App compared with the live `gateway.config.SETTINGS` registry.
What only a real `bicep build` / `azd provision` can prove is listed in docs/deploy.md ("What the offline checks
cannot prove").
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pycep import BicepParser

from gateway.config import BACKEND_PREFIX, SETTINGS, parse_backend

ROOT = Path(__file__).resolve().parents[2]
BICEP = ROOT / "infra" / "bicep"
MAIN = BICEP / "main.bicep"
FUNCTION_APP = BICEP / "modules" / "functionapp.bicep"
README = ROOT / "README.md"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
BICEP_FILES = sorted(BICEP.rglob("*.bicep"))

# Settings the app's platform reads, set by main.bicep but not in gateway.config.SETTINGS (which lists only the
# gateway's own names). Who reads each:
PLATFORM_SETTINGS = {
    # Functions host + Durable Functions (identity-based AzureWebJobsStorage); gateway/storage.py falls back to them
    # for the state table when GATEWAY_STATE_STORAGE is empty.
    "AzureWebJobsStorage",
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    # Functions host and the Python worker's OpenTelemetry/Azure Monitor exporter.
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    # Functions host / Azure Monitor exporter: Microsoft Entra auth for telemetry (the component's local auth is off).
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    # azure-identity's DefaultAzureCredential (gateway/credentials.py): picks the user-assigned identity.
    "AZURE_CLIENT_ID",
}

# Settings main.bicep sets that the code does not read YET. The contract test tolerates exactly these; remove each
# name when it is added to gateway.config.SETTINGS — the test fails until you do, so this list cannot go stale.
# Empty now: GATEWAY_RESULTS_CONTAINER, GATEWAY_COMPLETIONS_ENTITY and COMPLETIONS_SERVICEBUS__fullyQualifiedNamespace
# / __clientId were pending until the async path added them to SETTINGS.
PENDING_IN_CODE: set[str] = set()

# SETTINGS entries with an empty default that the gateway cannot serve without on Azure: main.bicep must set them.
REQUIRED_ON_AZURE = {"GATEWAY_API_KEYS"}

# Secret-bearing settings: their value must be a Key Vault reference, never a literal or a parameter.
SECRET_SETTINGS = {"GATEWAY_API_KEYS"}

# Flex Consumption rejects or ignores these (functionAppConfig replaces them); setting one breaks or misleads.
FLEX_DEPRECATED_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
    "DEPLOYMENT_STORAGE_CONNECTION_STRING",
    "WEBSITE_TIME_ZONE",
}

# Built-in role definition ids the deployment must grant, and roles it must never grant.
REQUIRED_ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39": "Azure Service Bus Data Sender",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd": "Cognitive Services OpenAI User",
}
FORBIDDEN_ROLES = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
    "a001fd3d-188f-4b5d-821b-7da978bf7442": "Cognitive Services OpenAI Contributor",
    "090c5cfd-751d-490a-894a-3ce6f1109419": "Azure Service Bus Data Owner",
    "00482a5a-887f-4fb3-b363-3b7fe8e74483": "Key Vault Administrator",
}
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# ------------------------------------------------------------------------------------------------------------------
# Parse-tree helpers
# ------------------------------------------------------------------------------------------------------------------


@cache
def _parser() -> BicepParser:
    return BicepParser(cache=False)


@cache
def tree(path: Path) -> dict[str, Any]:
    """The pycep JSON tree of one file; a parse error fails the calling test naming the file."""
    try:
        return _parser().parse(file_path=path)
    except Exception as exc:  # lark raises several unrelated error types
        pytest.fail(f"{path.relative_to(ROOT)} does not parse: {type(exc).__name__}: {exc}")


def body(config: dict[str, Any]) -> dict[str, Any]:
    """The resource/module body under any `if (...)` or `[for ...]` wrappers (pycep nests them as config.config)."""
    while "config" in config and ("condition" in config or "loop_type" in config):
        config = config["config"]
    return config


def walk(node: Any) -> Iterator[Any]:
    """Every node of a parse tree, depth first."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def decorators(declaration: dict[str, Any]) -> dict[str, Any]:
    return {d["type"]: d.get("argument") for d in declaration.get("decorators", [])}


def resources_of_type(resource_type: str) -> list[tuple[Path, str, dict[str, Any]]]:
    return [
        (path, name, resource)
        for path in BICEP_FILES
        for name, resource in tree(path).get("resources", {}).items()
        if resource["type"].lower() == resource_type.lower() and not resource["existing"]
    ]


def one_resource(path: Path, resource_type: str) -> dict[str, Any]:
    found = [r for p, _, r in resources_of_type(resource_type) if p == path]
    assert len(found) == 1, f"{path.name}: expected one {resource_type}, found {len(found)}"
    return body(found[0]["config"])


def module_path(name: str) -> Path:
    return BICEP / tree(MAIN)["modules"][name]["detail"]["path"]


def app_settings() -> dict[str, Any]:
    """The Function App's appSettings: name -> value expression, read from the parse tree of functionapp.bicep.

    The `appsettings` config resource is `union(gatewaySettings, backendSettings, appSettings)`: the literal names
    are the keys of the `appSettings` variable; `backendSettings` is built by main.bicep (checked by
    test_backend_settings_*); `gatewaySettings` is the operator's free-form tuning object (empty by default, names
    validated by the app at start-up).
    """
    module = tree(FUNCTION_APP)
    config = [r for r in module["resources"].values() if r["type"] == "Microsoft.Web/sites/config"]
    assert len(config) == 1 and body(config[0]["config"])["name"] == "appsettings"
    union = body(config[0]["config"])["properties"]["function"]
    assert union["type"] == "union"
    assert list(union["parameters"].values()) == ["gatewaySettings", "backendSettings", "appSettings"], (
        "appsettings must be union(gatewaySettings, backendSettings, appSettings) so the fixed wiring wins"
    )
    assert module["parameters"]["gatewaySettings"]["default"] == {}
    settings = module["variables"]["appSettings"]["value"]
    assert isinstance(settings, dict) and settings
    return settings


def backend_loops() -> dict[str, dict[str, Any]]:
    """main.bicep's variables that build GATEWAY_BACKEND_<n> entries (for-loops yielding {name, value})."""
    loops = {}
    for name, variable in tree(MAIN)["variables"].items():
        value = variable["value"]
        if isinstance(value, dict) and "loop_type" in value:
            entry = body(value)
            if isinstance(entry.get("name"), str) and entry["name"].startswith(BACKEND_PREFIX):
                loops[name] = entry
    return loops


def names_set_by_main() -> set[str]:
    """Every app setting name main.bicep gives the app (backend names as the pattern's first instance)."""
    return set(app_settings()) | {f"{BACKEND_PREFIX}1"}


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------------------------
# Files and wiring
# ------------------------------------------------------------------------------------------------------------------


def test_the_expected_files_exist() -> None:
    assert (ROOT / "azure.yaml").is_file()
    assert MAIN.is_file() and (BICEP / "main.parameters.json").is_file()
    assert DEPLOY_DOC.is_file()
    assert not (BICEP / ".gitkeep").exists()
    modules = {p.name for p in (BICEP / "modules").glob("*.bicep")}
    assert {"functionapp.bicep", "storage.bicep", "servicebus.bicep", "monitoring.bicep", "rbac.bicep"} <= modules


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(BICEP)))
def test_every_bicep_file_parses(path: Path) -> None:
    parsed = tree(path)
    assert parsed.get("parameters") or parsed.get("resources"), f"{path.name} declares nothing"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(BICEP)))
def test_the_parser_sees_every_declaration(path: Path) -> None:
    """Guards the other checks: pycep silently drops some constructs (e.g. doubly nested child resources)."""
    text = path.read_text(encoding="utf-8")
    parsed = tree(path)
    for keyword, section in (
        ("param", "parameters"),
        ("var", "variables"),
        ("resource", "resources"),
        ("module", "modules"),
        ("output", "outputs"),
    ):
        declared = set(re.findall(rf"^\s*{keyword}\s+(\w+)\s", text, re.MULTILINE))
        # Nested child resources are flattened as parent__child.
        seen = {name.split("__")[-1] for name in parsed.get(section, {})}
        assert declared == seen, f"{path.name}: {keyword} declarations the parser missed: {declared ^ seen}"


def test_azure_yaml_declares_the_gateway_function_service() -> None:
    manifest = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    assert manifest["infra"]["provider"] == "bicep"
    assert manifest["infra"]["path"] == "infra/bicep"
    assert (ROOT / manifest["infra"]["path"] / f"{manifest['infra'].get('module', 'main')}.bicep").is_file()
    assert manifest["services"] == {"gateway": {"project": ".", "language": "python", "host": "function"}}
    # azd finds the app by this tag; it must name the service.
    app = tree(FUNCTION_APP)
    assert app["parameters"]["serviceName"]["default"] == "gateway"
    assert "'azd-service-name'" in json.dumps(one_resource(FUNCTION_APP, "Microsoft.Web/sites")["tags"])


def test_every_module_path_exists_and_every_module_is_used() -> None:
    used = set()
    for name in tree(MAIN)["modules"]:
        path = module_path(name)
        assert path.is_file(), f"main.bicep module {name} points at missing {path}"
        used.add(path)
    orphans = {p.name for p in (BICEP / "modules").glob("*.bicep")} - {p.name for p in used}
    assert not orphans, f"modules not used by main.bicep: {sorted(orphans)}"


def test_module_parameters_match_their_declarations() -> None:
    """What `bicep build` would report as BCP035/BCP037: missing required or unknown module parameters."""
    for name, module in tree(MAIN)["modules"].items():
        declared = tree(module_path(name))["parameters"]
        passed = set(body(module["config"]).get("params", {}))
        unknown = passed - set(declared)
        assert not unknown, f"module {name} passes undeclared parameters {sorted(unknown)}"
        required = {p for p, d in declared.items() if d.get("default") is None}
        missing = required - passed
        assert not missing, f"module {name} does not pass required parameters {sorted(missing)}"


def test_module_outputs_used_by_main_exist() -> None:
    text = MAIN.read_text(encoding="utf-8")
    modules = tree(MAIN)["modules"]
    uses = re.findall(r"\b(\w+)(?:\[\w+\])?\.outputs\.(\w+)", text)
    assert uses
    for symbol, output in uses:
        assert symbol in modules, f"main.bicep reads outputs of unknown module {symbol}"
        outputs = tree(module_path(symbol)).get("outputs", {})
        assert output in outputs, f"main.bicep reads {symbol}.outputs.{output}; {module_path(symbol).name} has none"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(BICEP)))
def test_every_parameter_and_output_is_described(path: Path) -> None:
    parsed = tree(path)
    for kind in ("parameters", "outputs"):
        for name, declaration in parsed.get(kind, {}).items():
            assert decorators(declaration).get("description"), f"{path.name}: {kind[:-1]} {name} has no @description"


def test_parameters_file_matches_main() -> None:
    declared = tree(MAIN)["parameters"]
    given = json.loads((BICEP / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert set(given) <= set(declared), f"unknown parameters in main.parameters.json: {set(given) - set(declared)}"
    required = {p for p, d in declared.items() if d.get("default") is None}
    # gatewayApiKeys is a secret: azd prompts for it and keeps it in the environment's config, never in a file.
    assert required - set(given) == {"gatewayApiKeys"}
    assert "gatewayApiKeys" not in given


def test_deploy_doc_lists_every_main_parameter() -> None:
    doc = DEPLOY_DOC.read_text(encoding="utf-8")
    missing = [p for p in tree(MAIN)["parameters"] if f"`{p}`" not in doc]
    assert not missing, f"docs/deploy.md does not document {missing}"


# ------------------------------------------------------------------------------------------------------------------
# Settings contract with gateway.config.SETTINGS
# ------------------------------------------------------------------------------------------------------------------


def test_every_setting_main_bicep_sets_is_read_by_the_code() -> None:
    """(a) Each app setting is in SETTINGS, matches GATEWAY_BACKEND_<n>, is a platform setting, or is PENDING."""
    unread = sorted(
        name
        for name in names_set_by_main()
        if name not in SETTINGS
        and not re.fullmatch(rf"{BACKEND_PREFIX}\d+", name)
        and name not in PLATFORM_SETTINGS
        and name not in PENDING_IN_CODE
    )
    assert not unread, f"main.bicep sets settings no code reads: {unread}"


def test_pending_names_are_still_pending() -> None:
    """PENDING_IN_CODE must shrink as the code lands: a name already in SETTINGS must leave the list."""
    landed = sorted(PENDING_IN_CODE & set(SETTINGS))
    assert not landed, f"remove {landed} from PENDING_IN_CODE in {Path(__file__).name}: the code reads them now"
    assert PENDING_IN_CODE <= set(app_settings()), "PENDING_IN_CODE lists names main.bicep does not set"


def test_every_setting_the_code_reads_is_set_defaulted_or_documented() -> None:
    """(b) Required settings are set by main.bicep; every other one has a default or is documented as optional."""
    set_by_main = names_set_by_main()
    assert not REQUIRED_ON_AZURE - set_by_main, f"main.bicep must set {sorted(REQUIRED_ON_AZURE - set_by_main)}"
    readme = readme_text()
    undocumented = sorted(
        name for name, default in SETTINGS.items() if name not in set_by_main and not default and name not in readme
    )
    assert not undocumented, f"settings with no default, not set by main.bicep and not in README.md: {undocumented}"


def test_secrets_are_key_vault_references_and_never_plain() -> None:
    settings = app_settings()
    for name in SECRET_SETTINGS:
        value = settings[name]
        assert isinstance(value, str) and re.fullmatch(r"@Microsoft\.KeyVault\(SecretUri=\$\{\w+\}\)", value), (
            f"{name} must be a Key Vault reference, got {value!r}"
        )
    main = tree(MAIN)["parameters"]
    assert "secure" in decorators(main["gatewayApiKeys"])
    assert "secure" in decorators(main["backendKeys"])
    vault = tree(BICEP / "modules" / "keyvault.bicep")["parameters"]
    assert "secure" in decorators(vault["gatewayApiKeys"]) and "secure" in decorators(vault["backendKeys"])
    # The Function App module gets no secret at all, only the secret's URI.
    assert not [p for p, d in tree(FUNCTION_APP)["parameters"].items() if "secure" in decorators(d)]


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(BICEP)))
def test_no_keys_or_connection_strings_anywhere(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for pattern in (r"listKeys\(", r"listConnectionStrings\(", r"AccountKey=", r"SharedAccessKey", r"primaryKey"):
        assert not re.search(pattern, text, re.IGNORECASE), f"{path.name} uses {pattern}"
    secure = {p for p, d in tree(path).get("parameters", {}).items() if "secure" in decorators(d)}
    for name, output in tree(path).get("outputs", {}).items():
        leaked = {leaf for leaf in walk(output["value"]) if isinstance(leaf, str)} & secure
        assert not leaked, f"{path.name}: output {name} exposes secure parameter {leaked}"


def test_flex_consumption_gets_no_deprecated_settings() -> None:
    for path in BICEP_FILES:
        text = path.read_text(encoding="utf-8")
        found = sorted(n for n in FLEX_DEPRECATED_SETTINGS if re.search(rf"\b{n}\b", text))
        assert not found, f"{path.name} sets settings Flex Consumption does not accept: {found}"


def test_backend_settings_are_numbered_and_parse_with_the_gateway_parser() -> None:
    """GATEWAY_BACKEND_<n> entries: existing backends then created accounts, each a string parse_backend accepts."""
    loops = backend_loops()
    assert set(loops) == {"existingBackendSettings", "createdBackendSettings"}
    samples = {
        "host": "https://weu.openai.azure.com",
        "mode": "direct",
        "processor": "OpenAI",
        "usemi": "true",
        "api-key": "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/backend-weu)",
        "priority": "1",
        "weight": "1",
        "tier": "ptu",
        "deployments": "gpt-4o-mini",
        "name": "weu",
    }
    for name, entry in loops.items():
        assert re.fullmatch(rf"{BACKEND_PREFIX}\$\{{.+\}}", entry["name"]), f"{name}: name {entry['name']!r}"
        join = entry["value"]["function"]
        assert join["type"] == "join" and join["parameters"]["delimiter"] == ";"
        segments = [
            segment
            for leaf in walk(join["parameters"]["input_array"])
            if isinstance(leaf, str) and "=" in leaf
            for segment in leaf.split(";")
            if segment
        ]
        keys = {segment.split("=", 1)[0] for segment in segments}
        assert {"host", "mode", "processor", "usemi", "name"} <= keys, f"{name} misses keys: {keys}"
        unknown = keys - set(samples)
        assert not unknown, f"{name}: keys this test has no sample for: {unknown}"
        # Empty optional segments leave ';;' behind: the gateway must accept them as it accepts every key used.
        backend = parse_backend(";;".join(f"{k}={samples[k]}" for k in sorted(keys)), setting=f"{BACKEND_PREFIX}1")
        assert backend.host == samples["host"]
    existing = backend_loops()["existingBackendSettings"]["value"]["function"]["parameters"]["input_array"]
    assert "usemi=true" in json.dumps(existing), "existing backends must default to managed identity"
    created = backend_loops()["createdBackendSettings"]["value"]["function"]["parameters"]["input_array"]
    assert "usemi=true" in created and not any("api-key" in str(s) for s in created)
    # Created accounts are numbered after the existing backends.
    assert backend_loops()["createdBackendSettings"]["name"].startswith(f"{BACKEND_PREFIX}${{length(backends) + i")


# ------------------------------------------------------------------------------------------------------------------
# Resources: Flex Consumption, identity-only access, Service Bus, least-privilege roles
# ------------------------------------------------------------------------------------------------------------------


def test_function_app_is_flex_consumption_python_with_the_user_assigned_identity() -> None:
    plan = one_resource(FUNCTION_APP, "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"} and plan["properties"]["reserved"] is True
    site = one_resource(FUNCTION_APP, "Microsoft.Web/sites")
    assert site["kind"] == "functionapp,linux"
    assert site["identity"]["type"] == "UserAssigned"
    props = site["properties"]
    assert props["httpsOnly"] is True
    assert props["keyVaultReferenceIdentity"] == "identityId", "Key Vault references must use the user identity"
    config = props["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "pythonVersion"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": "identityId"}
    scale = config["scaleAndConcurrency"]
    assert scale["instanceMemoryMB"] == "instanceMemoryMB" and scale["maximumInstanceCount"] == "maximumInstanceCount"
    assert "alwaysReady" in scale
    settings = app_settings()
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert "AzureWebJobsStorage" not in settings, "a connection string would need shared keys"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "Authorization=AAD;ClientId=${identityClientId}"
    for name in ("AzureWebJobsStorage__clientId", "AZURE_CLIENT_ID", "COMPLETIONS_SERVICEBUS__clientId"):
        assert settings[name] == "identityClientId", name


def test_python_version_is_the_one_pyproject_requires() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    version = re.search(r">=\s*(\d+\.\d+)", requires).group(1)
    assert tree(MAIN)["parameters"]["pythonVersion"]["default"] == version
    assert tree(FUNCTION_APP)["parameters"]["pythonVersion"]["default"] == version


def test_flex_parameters_are_bounded() -> None:
    params = tree(MAIN)["parameters"]
    assert decorators(params["instanceMemoryMB"])["allowed"] == [512, 2048, 4096]
    assert params["instanceMemoryMB"]["default"] == 2048
    assert decorators(params["maximumInstanceCount"])["min_value"] == 40
    assert decorators(params["maximumInstanceCount"])["max_value"] == 1000
    assert params["alwaysReadyHttpInstances"]["default"] == 0, "scale to zero by default: nothing billed at rest"


def test_data_services_accept_microsoft_entra_identities_only() -> None:
    modules = BICEP / "modules"
    storage = one_resource(modules / "storage.bicep", "Microsoft.Storage/storageAccounts")["properties"]
    assert storage["allowSharedKeyAccess"] is False and storage["allowBlobPublicAccess"] is False
    assert storage["minimumTlsVersion"] == "TLS1_2" and storage["supportsHttpsTrafficOnly"] is True
    insights = one_resource(modules / "monitoring.bicep", "Microsoft.Insights/components")["properties"]
    assert insights["DisableLocalAuth"] is True
    namespace = one_resource(modules / "servicebus.bicep", "Microsoft.ServiceBus/namespaces")
    assert namespace["properties"]["disableLocalAuth"] is True
    vault = one_resource(modules / "keyvault.bicep", "Microsoft.KeyVault/vaults")["properties"]
    assert vault["enableRbacAuthorization"] is True and vault["enableSoftDelete"] is True
    account = one_resource(modules / "openai.bicep", "Microsoft.CognitiveServices/accounts")["properties"]
    assert account["disableLocalAuth"] is True
    assert account["customSubDomainName"] == "name", "main.bicep derives the endpoint from the account name"


def test_storage_holds_the_containers_and_table_the_app_uses() -> None:
    storage = tree(BICEP / "modules" / "storage.bicep")["resources"]
    containers = {body(r["config"])["name"] for r in storage.values() if r["type"].endswith("/containers")}
    assert containers == {"deploymentContainerName", "resultsContainerName"}
    tables = {body(r["config"])["name"] for r in storage.values() if r["type"].endswith("/tables")}
    assert tables == {"stateTableName"}
    names = tree(MAIN)["variables"]["names"]["value"]
    assert names["resultsContainer"] == SETTINGS.get("GATEWAY_RESULTS_CONTAINER", "gateway-results")
    assert names["stateTable"] == SETTINGS["GATEWAY_STATE_TABLE"]
    assert names["completionsTopic"] == SETTINGS.get("GATEWAY_COMPLETIONS_ENTITY", "completions")


def test_completions_topic_has_duplicate_detection_and_a_subscription() -> None:
    module = BICEP / "modules" / "servicebus.bicep"
    namespace = one_resource(module, "Microsoft.ServiceBus/namespaces")
    assert namespace["sku"] == {"name": "Standard", "tier": "Standard"}
    topic = one_resource(module, "Microsoft.ServiceBus/namespaces/topics")["properties"]
    assert topic["requiresDuplicateDetection"] is True
    assert topic["duplicateDetectionHistoryTimeWindow"] == "duplicateDetectionWindow"
    one_resource(module, "Microsoft.ServiceBus/namespaces/topics/subscriptions")
    default = tree(module)["parameters"]["duplicateDetectionWindow"]["default"]
    assert re.fullmatch(r"P(T\d+[HMS]|\d+D)", default)


def test_role_assignments_are_idempotent_and_least_privilege() -> None:
    assignments = resources_of_type("Microsoft.Authorization/roleAssignments")
    assert assignments
    granted: set[str] = set()
    for path, name, resource in assignments:
        config = body(resource["config"])
        assert config["name"]["function"]["type"] == "guid", f"{path.name}:{name} name must be guid(...)"
        assert config["properties"]["principalType"], f"{path.name}:{name} needs principalType"
        assert config.get("scope"), f"{path.name}:{name} must be scoped to one resource"
        # Role ids are module-level constants (a `roles` object or a single variable) referenced by name.
        role_refs = json.dumps(config["properties"]["roleDefinitionId"])
        variables = tree(path).get("variables", {})
        ids = set(GUID.findall(json.dumps({k: v for k, v in variables.items() if k in role_refs})))
        assert ids, f"{path.name}:{name} role id not found"
        granted |= ids
    assert not set(FORBIDDEN_ROLES) & granted, f"broad roles granted: {[FORBIDDEN_ROLES[i] for i in granted]}"
    missing = [role for role_id, role in REQUIRED_ROLES.items() if role_id not in granted]
    assert not missing, f"roles never granted: {missing}"


def test_existing_backends_get_openai_user_at_their_own_resource_group() -> None:
    module = tree(MAIN)["modules"]["existingAccountAccess"]
    assert module["detail"]["path"] == "modules/openai-access.bicep"
    assert module["config"]["loop_type"]["detail"]["array_name"] == "backendsWithResourceId"
    scope = body(module["config"])["scope"]["function"]
    assert scope["type"] == "resource_group" and scope["parameters"]["subscription_id"], "scope from the resource id"
    gateway = body(tree(MAIN)["modules"]["gateway"]["config"])
    assert {"appRoles", "existingAccountAccess", "createdAccountAccess"} <= set(gateway["dependsOn"]), (
        "the app must start with its roles already in place"
    )


def test_checkov_skips_are_justified_in_the_deploy_doc() -> None:
    config = yaml.safe_load((BICEP / ".checkov.yaml").read_text(encoding="utf-8"))
    doc = DEPLOY_DOC.read_text(encoding="utf-8")
    unexplained = [check for check in config["skip-check"] if check not in doc]
    assert not unexplained, f"checkov findings skipped without a reason in docs/deploy.md: {unexplained}"
