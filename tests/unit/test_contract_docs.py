"""The published contract documents (docs/schemas/*.json, docs/asyncapi.yaml) are exactly what the models
generate, and they cover every topic and every event type."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from shared.contract import schemas, topics
from shared.contract.events import EventType, schema_uri
from shared.infra.paths import PROJECT_ROOT

pytestmark = pytest.mark.unit

REGENERATE = "run `.venv/bin/python -m shared.contract.schemas` and commit the result"
GENERATED = schemas.generate()


def _asyncapi() -> dict[str, Any]:
    document = yaml.safe_load((PROJECT_ROOT / schemas.ASYNCAPI_PATH).read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def test_documents_on_disk_match_the_models() -> None:
    stale = [
        path for path, text in GENERATED.items()
        if not (PROJECT_ROOT / path).is_file() or (PROJECT_ROOT / path).read_text(encoding="utf-8") != text
    ]
    assert not stale, f"{stale} differ from what the contract models generate; {REGENERATE}"


def test_no_schema_file_is_left_over() -> None:
    schema_dir = PROJECT_ROOT / schemas.SCHEMA_DIR
    on_disk = {path.relative_to(PROJECT_ROOT).as_posix() for path in schema_dir.glob("*.json")}
    extra = on_disk - GENERATED.keys()
    assert not extra, f"{sorted(extra)} are no longer generated from the models; {REGENERATE}"


def test_generation_is_deterministic() -> None:
    assert schemas.generate() == GENERATED


def test_asyncapi_names_every_topic() -> None:
    document = _asyncapi()
    assert document["asyncapi"].startswith("3.")
    addresses = {channel["address"] for channel in document["channels"].values()}
    missing = set(topics.ALL) - addresses
    assert not missing, f"docs/asyncapi.yaml has no channel for {sorted(missing)}; {REGENERATE}"


def test_asyncapi_references_resolve() -> None:
    """Every `$ref` in the AsyncAPI document points at a file that exists or at a node inside the document."""
    document = _asyncapi()
    base = (PROJECT_ROOT / schemas.ASYNCAPI_PATH).parent

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return own + [ref for value in node.values() for ref in refs(value)]
        if isinstance(node, list):
            return [ref for item in node for ref in refs(item)]
        return []

    found = refs(document)
    assert found
    for ref in found:
        if ref.startswith("#/"):
            node: Any = document
            for part in ref[2:].split("/"):
                assert isinstance(node, dict), f"{ref} does not resolve in docs/asyncapi.yaml"
                assert part in node, f"{ref} does not resolve in docs/asyncapi.yaml"
                node = node[part]
        else:
            assert (base / ref).resolve().is_file(), f"{ref} is not a file beside docs/asyncapi.yaml"


def test_every_message_documents_its_kafka_key() -> None:
    for name, message in _asyncapi()["components"]["messages"].items():
        key = message["bindings"]["kafka"]["key"]
        assert key["type"] == "string", f"message {name}: a Kafka key is a string"
        assert key["description"], f"message {name} does not document its key"


@pytest.mark.parametrize("event_type", list(EventType), ids=lambda event_type: event_type.value)
def test_every_event_type_has_a_data_schema(event_type: EventType) -> None:
    path = PROJECT_ROOT / schemas.schema_path(schemas.data_schema_file(event_type))
    assert path.is_file(), f"no data schema for {event_type.value}; {REGENERATE}"
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema["$id"] == schema_uri(event_type)
    assert schema["type"] == "object"
    # Extra fields are allowed and kept (DESIGN §3), so newer minor versions pass through.
    assert schema.get("additionalProperties") is True


def test_json_schema_patterns_are_portable() -> None:
    """Schema patterns are ECMA-262 regexes; Python's `(?P<name>` would make JavaScript validators refuse the
    whole schema."""
    offending = [path for path, text in GENERATED.items() if path.endswith(".json") and "(?P<" in text]
    assert not offending
