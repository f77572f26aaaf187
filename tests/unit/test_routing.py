"""Static selection for the foundation: lowest priority first, then highest weight, then config order."""

from gateway.config import parse_backend
from gateway.routing import BackendPool


def backend(spec: str):
    return parse_backend(spec, setting="T")


def test_priority_then_weight_then_configuration_order():
    pool = BackendPool(
        (
            backend("name=c;host=https://c.example;priority=2;weight=50;deployments=gpt-4o"),
            backend("name=a;host=https://a.example;priority=1;weight=1;deployments=gpt-4o=gpt-4o-a"),
            backend("name=b;host=https://b.example;priority=1;weight=5;deployments=gpt-4o"),
            backend("name=d;host=https://d.example;priority=1;weight=1;deployments=gpt-4o"),
            backend("name=e;host=https://e.example;priority=1;weight=9;deployments=other"),
        )
    )
    targets = pool.candidates("gpt-4o")
    assert [(t.backend.name, t.deployment) for t in targets] == [
        ("b", "gpt-4o"),
        ("a", "gpt-4o-a"),
        ("d", "gpt-4o"),
        ("c", "gpt-4o"),
    ]
    assert pool.candidates("unknown") == ()
    assert [t.backend.name for t in pool.candidates("other")] == ["e"]
