"""Settings parsing: connection strings, config files, and start-up errors that name the setting."""

import dataclasses
import json
from types import MappingProxyType

import pytest

from gateway.config import SETTING_DOCS, SETTINGS, ConfigError, Settings, load_settings, parse_backend
from gateway.settings_schema import ENTRIES

SEED = (
    "host=https://weu.openai.azure.com;mode=direct;processor=OpenAI;usemi=true;"
    "api-key=@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/weu);probe=/status;priority=1;"
    "weight=10;tier=ptu;deployments=gpt-4o=gpt-4o-weu,gpt-4o-mini;name=weu"
)


def test_parses_the_architecture_example():
    b = parse_backend(SEED, setting="GATEWAY_BACKEND_1")
    assert (b.name, b.host, b.mode, b.processor, b.use_mi) == (
        "weu",
        "https://weu.openai.azure.com",
        "direct",
        "openai",
        True,
    )
    assert (b.probe, b.priority, b.weight, b.tier) == ("/status", 1, 10, "ptu")
    assert b.api_key == "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/weu)"
    assert dict(b.deployments) == {"gpt-4o": "gpt-4o-weu", "gpt-4o-mini": "gpt-4o-mini"}
    assert b.deployment_for("gpt-4o") == "gpt-4o-weu"
    assert b.deployment_for("gpt-4o-weu") == "gpt-4o-weu"  # the real deployment name works too
    assert b.deployment_for("gpt-35") is None
    assert "api_key" not in repr(b) and "KeyVault" not in repr(b)
    assert b.masked()["api-key"] == "***"


def test_defaults_follow_the_seed():
    b = parse_backend("host=https://neu.openai.azure.com/", setting="S")
    assert (b.name, b.host, b.mode, b.processor, b.priority, b.weight) == (
        "neu",
        "https://neu.openai.azure.com",
        "apim",
        "openai",
        1,
        1,
    )
    assert b.deployment_for("anything") == "anything"  # no list: passthrough


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("host=https://a.example;colour=blue", "unknown key 'colour'"),
        ("mode=direct", "host must be an http(s) URL"),
        ("host=ftp://a.example", "host must be an http(s) URL"),
        ("host=https://a.example;mode=fast", "mode must be"),
        ("host=https://a.example;priority=first", "priority must be a whole number"),
        ("host=https://a.example;priority=0", "priority must be at least 1"),
        ("host=https://a.example;usemi=maybe", "usemi must be true or false"),
        ("host=https://a.example;probe=status", "probe must be a path"),
        ("host=https://a.example;deployments=a/b", "deployments must be"),
        ("host=https://a.example;sekrit", "segment 2 is not key=value"),
    ],
)
def test_wrong_backend_settings_name_the_setting_and_the_problem(value, fragment):
    with pytest.raises(ConfigError) as info:
        load_settings({"GATEWAY_BACKEND_3": value})
    assert str(info.value).startswith("GATEWAY_BACKEND_3: ")
    assert fragment in str(info.value)


def test_secrets_never_appear_in_errors():
    with pytest.raises(ConfigError) as info:
        load_settings({"GATEWAY_BACKEND_1": "host=https://a.example;api-key=TOPSECRET;weight=heavy"})
    assert "TOPSECRET" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_settings({"GATEWAY_BACKEND_1": "host=https://a.example;TOPSECRET"})
    assert "TOPSECRET" not in str(info.value)


def test_global_settings_and_defaults():
    s = load_settings(
        {
            "GATEWAY_BACKEND_2": "host=https://b.example;name=b",
            "GATEWAY_BACKEND_10": "host=https://c.example",
            "GATEWAY_API_KEYS": " k1, k2 ,",
            "GATEWAY_SYNC_BUDGET_S": "150",
        }
    )
    assert [b.name for b in s.backends] == ["b", "c"]  # numeric order, not string order
    assert dict(s.api_keys) == {"k1": "", "k2": ""} and not s.auth_disabled
    assert s.sync_budget_s == 150 and s.api_version == SETTINGS["GATEWAY_API_VERSION"]
    assert load_settings({"GATEWAY_BACKEND_1": "host=https://b.example"}).sync_budget_s == 200


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({}, "GATEWAY_BACKEND_1"),
        ({"GATEWAY_SYNC_BUDGET_S": "240"}, "GATEWAY_SYNC_BUDGET_S"),
        ({"GATEWAY_MAX_ATTEMPTS": "three"}, "GATEWAY_MAX_ATTEMPTS"),
        ({"GATEWAY_AUTH": "off"}, "GATEWAY_AUTH"),
        ({"GATEWAY_API_VERSION": "latest"}, "GATEWAY_API_VERSION"),
        ({"GATEWAY_SYNC_BUDGET": "100"}, "GATEWAY_SYNC_BUDGET"),  # a typo is caught, not ignored
        ({"GATEWAY_CONFIG_FILE": "/nonexistent/gw.yaml"}, "GATEWAY_CONFIG_FILE"),
    ],
)
def test_wrong_global_settings_fail_by_name(env, setting):
    if setting != "GATEWAY_BACKEND_1":
        env = {"GATEWAY_BACKEND_1": "host=https://a.example", **env}
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.setting == setting


def test_duplicate_names_are_refused():
    with pytest.raises(ConfigError, match="unique"):
        load_settings({"GATEWAY_BACKEND_1": "host=https://a.example", "GATEWAY_BACKEND_2": "host=https://a.example"})


def test_config_file_yaml_and_json_load_the_same_model(tmp_path):
    data = {
        "backends": [
            {
                "name": "weu",
                "host": "https://weu.openai.azure.com",
                "mode": "direct",
                "usemi": True,
                "priority": 1,
                "deployments": {"gpt-4o": "gpt-4o-weu"},
            },
            {
                "name": "neu",
                "host": "https://neu.openai.azure.com",
                "api_key": "k",
                "priority": 2,
                "deployments": ["gpt-4o"],
            },
        ]
    }
    json_file = tmp_path / "gw.json"
    json_file.write_text(json.dumps(data))
    yaml_file = tmp_path / "gw.yaml"
    yaml_file.write_text(
        "backends:\n"
        "  - {name: weu, host: 'https://weu.openai.azure.com', mode: direct, usemi: true, priority: 1,"
        " deployments: {gpt-4o: gpt-4o-weu}}\n"
        "  - {name: neu, host: 'https://neu.openai.azure.com', api_key: k, priority: 2, deployments: [gpt-4o]}\n"
    )
    from_json = load_settings({"GATEWAY_CONFIG_FILE": str(json_file)})
    from_yaml = load_settings({"GATEWAY_CONFIG_FILE": str(yaml_file)})
    assert from_json.backends == from_yaml.backends
    assert from_json.backends[1].api_key == "k" and from_json.models() == ["gpt-4o"]
    # File and connection strings combine.
    both = load_settings({"GATEWAY_CONFIG_FILE": str(json_file), "GATEWAY_BACKEND_1": "host=https://x.example"})
    assert [b.name for b in both.backends] == ["weu", "neu", "x"]


def test_config_file_errors_name_the_entry(tmp_path):
    bad = tmp_path / "gw.json"
    bad.write_text(json.dumps({"backends": [{"host": "https://a.example", "colour": "red"}]}))
    with pytest.raises(ConfigError, match=r"backends\[0\].*unknown key 'colour'"):
        load_settings({"GATEWAY_CONFIG_FILE": str(bad)})
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_settings({"GATEWAY_CONFIG_FILE": str(bad)})


def test_api_keys_may_be_named_after_their_caller():
    s = load_settings(
        {
            "GATEWAY_BACKEND_1": "host=https://a.example",
            "GATEWAY_API_KEYS": "team-a:0a1b2c,9f8e7d, search.svc:ZmFrZQ==",
            "GATEWAY_ASYNC_CALLERS": "team-a",
        }
    )
    assert dict(s.api_keys) == {"0a1b2c": "team-a", "9f8e7d": "", "ZmFrZQ==": "search.svc"}
    assert s.async_callers == {"team-a"}
    with pytest.raises(ConfigError, match="used twice") as info:
        load_settings({"GATEWAY_BACKEND_1": "host=https://a.example", "GATEWAY_API_KEYS": "a:SECRET1,a:SECRET2"})
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "keys"),
    [
        ("team-a:abc:def", {"abc:def": "team-a"}),  # only the first ':' separates the caller name
        ("a/b:cd:ef", {"a/b:cd:ef": ""}),  # the prefix is no valid name: one unnamed key, kept whole
        (":abc", {":abc": ""}),
        ("team-a:abc:def, x:y:z ,k", {"abc:def": "team-a", "y:z": "x", "k": ""}),
    ],
)
def test_api_keys_may_contain_colons(value, keys):
    s = load_settings({"GATEWAY_BACKEND_1": "host=https://a.example", "GATEWAY_API_KEYS": value})
    assert dict(s.api_keys) == keys


def test_api_key_errors_never_echo_a_key():
    with pytest.raises(ConfigError, match="caller name but no key"):
        load_settings({"GATEWAY_BACKEND_1": "host=https://a.example", "GATEWAY_API_KEYS": "k1,team-a:"})
    with pytest.raises(ConfigError, match="used twice") as info:
        load_settings({"GATEWAY_BACKEND_1": "host=https://a.example", "GATEWAY_API_KEYS": "a:SE:CRET1,a:SE:CRET2"})
    assert info.value.setting == "GATEWAY_API_KEYS" and "CRET" not in str(info.value)


def test_every_setting_is_declared_once_with_a_one_line_doc():
    names = [e.name for e in ENTRIES]
    fields = [e.field for e in ENTRIES if e.field]
    assert len(names) == len(set(names)) and len(fields) == len(set(fields))
    assert list(SETTINGS) == names and list(SETTING_DOCS) == names
    undocumented = [e.name for e in ENTRIES if not e.doc.strip() or "\n" in e.doc]
    assert undocumented == []
    # Each Settings field but the two families (GATEWAY_BACKEND_<n>, GATEWAY_PROFILE_<NAME>) is filled by exactly
    # one declared setting, and nothing else is.
    assert {f.name for f in dataclasses.fields(Settings)} - {"backends", "profiles"} == set(fields)


def test_dataclass_defaults_are_the_parsed_setting_defaults():
    declared = {f.name: f for f in dataclasses.fields(Settings)}
    for entry in ENTRIES:
        if entry.field is None or declared[entry.field].default is dataclasses.MISSING:
            continue  # GATEWAY_CONFIG_FILE fills no field; api_keys has no default, so it is always passed
        parsed = entry.parse(SETTINGS[entry.name], entry.name)
        default = declared[entry.field].default
        assert (default, type(default)) == (parsed, type(parsed)), entry.name
    # The same from the outside: an environment with only a backend gives the dataclass defaults.
    s = load_settings({"GATEWAY_BACKEND_1": "host=https://a.example"})
    assert s == Settings(backends=s.backends, api_keys=MappingProxyType({}), profiles=MappingProxyType({}))


def test_settings_parse_into_their_fields():
    s = load_settings(
        {
            "GATEWAY_BACKEND_1": "host=https://a.example",
            "GATEWAY_STATE_REFRESH_MS": "250",
            "GATEWAY_AUTH": "NONE",
            "GATEWAY_COMPLETIONS_ENTITY": " ",
            "GATEWAY_USAGE_FILE": "",
            "GATEWAY_STRATEGIES": "gpt-4o=Latency",
        }
    )
    assert (s.state_refresh_s, s.auth_disabled, s.completions_entity, s.usage_file) == (0.25, True, "completions", None)
    assert dict(s.strategies) == {"gpt-4o": "latency"} and s.strategy_for("other") == "priority"
    with pytest.raises(ConfigError) as info:
        load_settings({"GATEWAY_BACKEND_1": "host=https://a.example", "GATEWAY_STATE_REFRESH_MS": "0.5"})
    assert info.value.setting == "GATEWAY_STATE_REFRESH_MS"


def test_settings_repr_shows_no_secret():
    s = load_settings(
        {
            "GATEWAY_BACKEND_1": "host=https://a.example;api-key=BACKENDKEY",
            "GATEWAY_API_KEYS": "team-a:CALLERKEY",
            "GATEWAY_STATE_STORAGE": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=STORAGEKEY",
            "COMPLETIONS_SERVICEBUS": "Endpoint=sb://n/;SharedAccessKey=BUSKEY",
        }
    )
    assert s.state_storage.endswith("STORAGEKEY")
    assert [k for k in ("BACKENDKEY", "CALLERKEY", "STORAGEKEY", "BUSKEY") if k in repr(s)] == []


# --- profiles and caller mapping -------------------------------------------------------------------------------

PROFILE_ENV = {
    "GATEWAY_BACKEND_1": "host=https://a.example",
    "GATEWAY_PROFILE_GOLD": "rpm=600;tpm=200000;models=gpt-4o,gpt-4o-mini;priority=1;tiers=ptu,paygo;per=caller,model",
    "GATEWAY_PROFILE_BATCH": "tpm=50000;async=always;priority=9;tiers=paygo;ttl=3600;reserve=512;headers=X-Job-Id",
    "GATEWAY_CALLER_PROFILES": "team-a=gold,app:11111111-2222=batch,role:Batch.Submit=batch,group:g-1=gold",
    "GATEWAY_DEFAULT_PROFILE": "batch",
}


def test_profiles_are_parsed_from_their_settings():
    s = load_settings(PROFILE_ENV)
    gold, batch = s.profiles["gold"], s.profiles["batch"]
    assert (gold.rpm, gold.tpm, gold.models, gold.priority, gold.per_model) == (
        600, 200000, frozenset({"gpt-4o", "gpt-4o-mini"}), 1, True,
    )  # fmt: skip
    assert (batch.async_mode, batch.tiers, batch.ttl_s, batch.reserve, batch.headers) == (
        "always", frozenset({"paygo"}), 3600.0, 512, ("x-job-id",),
    )  # fmt: skip
    assert gold.allows_model("gpt-4o") and not gold.allows_model("o3")


def test_callers_are_mapped_by_name_app_role_group_then_default():
    s = load_settings(PROFILE_ENV)
    assert s.profile_for("team-a").name == "gold"
    assert s.profile_for("app:11111111-2222").name == "batch"
    assert s.profile_for("user:x", roles=["Batch.Submit"]).name == "batch"
    assert s.profile_for("user:x", groups=["g-1"]).name == "gold"
    assert s.profile_for("someone").name == "batch"  # GATEWAY_DEFAULT_PROFILE
    unlimited = load_settings({k: v for k, v in PROFILE_ENV.items() if k != "GATEWAY_DEFAULT_PROFILE"})
    assert unlimited.profile_for("someone").limited is False


def test_async_callers_is_a_deprecated_alias_of_async_always():
    s = load_settings({**PROFILE_ENV, "GATEWAY_ASYNC_CALLERS": "team-a"})
    assert s.profile_for("team-a").async_mode == "always" and s.profile_for("team-a").rpm == 600


def test_profiles_from_the_config_file(tmp_path):
    path = tmp_path / "gateway.json"
    path.write_text('{"profiles": {"Silver": {"RPM": 60, "models": ["gpt-4o"]}}}')
    s = load_settings({"GATEWAY_BACKEND_1": "host=https://a.example", "GATEWAY_CONFIG_FILE": str(path)})
    assert s.profiles["silver"].rpm == 60 and s.profiles["silver"].models == frozenset({"gpt-4o"})


@pytest.mark.parametrize(
    ("extra", "setting"),
    [
        ({"GATEWAY_PROFILE_GOLD": "rpm=many"}, "GATEWAY_PROFILE_GOLD"),
        ({"GATEWAY_PROFILE_GOLD": "colour=gold"}, "GATEWAY_PROFILE_GOLD"),
        ({"GATEWAY_PROFILE_GOLD": "async=sometimes"}, "GATEWAY_PROFILE_GOLD"),
        ({"GATEWAY_PROFILE_GOLD": "priority=0"}, "GATEWAY_PROFILE_GOLD"),
        ({"GATEWAY_PROFILE_GOLD": "tiers=gold"}, "GATEWAY_PROFILE_GOLD"),
        ({"GATEWAY_CALLER_PROFILES": "team-a=platinum"}, "GATEWAY_CALLER_PROFILES"),
        ({"GATEWAY_CALLER_PROFILES": "team-a"}, "GATEWAY_CALLER_PROFILES"),
        ({"GATEWAY_DEFAULT_PROFILE": "platinum"}, "GATEWAY_DEFAULT_PROFILE"),
    ],
)
def test_profile_mistakes_are_start_up_errors_naming_the_setting(extra: dict, setting: str):
    with pytest.raises(ConfigError) as error:
        load_settings({**PROFILE_ENV, **extra})
    assert error.value.setting == setting
