"""The event contract as documents: JSON Schemas under `docs/schemas/` and an AsyncAPI 3.0 description of the
Kafka topics in `docs/asyncapi.yaml`.

Both are generated from the pydantic models that validate and build the events, so a document cannot promise
something the code does not check. `tests/unit/test_contract_docs.py` fails when the files on disk drift from
the models; rewrite them with `python -m shared.contract.schemas`.
"""

from __future__ import annotations

import ast
import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel

from shared.contract import topics
from shared.contract.dossier_code import MAX_LENGTH
from shared.contract.events import (
    DATA_MODELS,
    SCHEMA_MAJOR,
    SCHEMA_MINOR,
    CloudEvent,
    EventType,
    schema_uri,
)
from shared.contract.lifecycle import DossierLifecycleEvent, EventAccepted
from shared.contract.rejections import RejectionRecorded

SCHEMA_DIR: Final = "docs/schemas"
ASYNCAPI_PATH: Final = "docs/asyncapi.yaml"
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
KAFKA_BINDING_VERSION: Final = "0.5.0"

ENVELOPE_FILE: Final = "cloudevent.json"
ACCEPTED_FILE: Final = "event-accepted.json"
LIFECYCLE_FILE: Final = "dossier-lifecycle-event.json"
REJECTION_FILE: Final = "rejection-recorded.json"

Mode = Literal["validation", "serialization"]


def data_schema_file(event_type: EventType) -> str:
    """File name, inside SCHEMA_DIR, of the schema of one event type's `data`."""
    return f"data.{event_type.value}.json"


def schema_path(file_name: str) -> str:
    """Path of a schema file relative to the repository root."""
    return f"{SCHEMA_DIR}/{file_name}"


# ---- JSON Schemas ------------------------------------------------------------------------------------------


def _ecma_patterns(node: Any) -> Any:
    """Rewrite Python-only regex syntax in `pattern` keywords.

    JSON Schema patterns are ECMA-262 regular expressions, and JavaScript validators reject Python's
    `(?P<name>` named groups outright; `(?<name>` means the same in both languages.
    """
    if isinstance(node, dict):
        return {
            key: value.replace("(?P<", "(?<")
            if key == "pattern" and isinstance(value, str)
            else _ecma_patterns(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_ecma_patterns(item) for item in node]
    return node


def _schema(model: type[BaseModel], mode: Mode, **extra: Any) -> dict[str, Any]:
    schema = _ecma_patterns(model.model_json_schema(mode=mode))
    return {"$schema": JSON_SCHEMA_DIALECT, **extra, **schema}


def _json_text(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def json_schemas() -> dict[str, dict[str, Any]]:
    """{file name: JSON Schema}.

    What commune systems send (the envelope and each type's data) is described in validation mode: what we
    accept. What the services publish is described in serialization mode: what consumers read.
    """
    schemas = {ENVELOPE_FILE: _schema(CloudEvent, "validation")}
    for event_type in EventType:
        # Several types share one data model (e.g. `Reasoned`); the title names the type, so each file reads
        # on its own. The `$id` is the URI a commune puts in the envelope's `dataschema`.
        schemas[data_schema_file(event_type)] = _schema(
            DATA_MODELS[event_type], "validation", **{"$id": schema_uri(event_type)}
        ) | {"title": f"data of {event_type.cloudevents_type}"}
    schemas[ACCEPTED_FILE] = _schema(EventAccepted, "serialization")
    schemas[LIFECYCLE_FILE] = _schema(DossierLifecycleEvent, "serialization")
    schemas[REJECTION_FILE] = _schema(RejectionRecorded, "serialization")
    return schemas


# ---- AsyncAPI ----------------------------------------------------------------------------------------------
# Every helper below builds fresh dicts: yaml.safe_dump writes a dict reached twice as an anchor and an alias
# (&id001 / *id001), which many AsyncAPI tools and readers handle badly.


def _topic_notes() -> dict[str, str]:
    """The docstring under each topic constant in topics.py, so a topic is described in one place only."""
    tree = ast.parse(Path(topics.__file__).read_text(encoding="utf-8"))
    notes: dict[str, str] = {}
    body = tree.body
    for statement, following in itertools.pairwise(body):
        if (
            isinstance(statement, ast.AnnAssign | ast.Assign)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            target = statement.target if isinstance(statement, ast.AnnAssign) else statement.targets[0]
            if isinstance(target, ast.Name):
                notes[getattr(topics, target.id)] = following.value.value.strip()
    return notes


def _ref(pointer: str) -> dict[str, str]:
    return {"$ref": pointer}


def _file_ref(file_name: str) -> dict[str, str]:
    # Relative to docs/asyncapi.yaml, so the document and its schemas can be moved or served together.
    return _ref(f"./schemas/{file_name}")


def _kafka_key(description: str) -> dict[str, Any]:
    return {
        "kafka": {
            "key": {"type": "string", "maxLength": MAX_LENGTH, "description": description},
            "bindingVersion": KAFKA_BINDING_VERSION,
        }
    }


DOSSIER_KEY: Final = (
    "The dossier code (mã số hồ sơ). One key per dossier, so a dossier's events share a partition and its "
    "order is the partition's order."
)
INGRESS_KEY: Final = (
    "Should be the dossier code, the CloudEvent's `subject`, so a dossier's events keep their order. A "
    "`received` event sent without a code (intake mints one) may carry any key."
)
REJECTION_KEY: Final = (
    "The dossier code when the refused input named one, otherwise the sending source; absent when neither is "
    "known."
)


def _ingress_message(event_type: EventType) -> dict[str, Any]:
    # parse_cloudevent requires a subject (the dossier code) on every type but `received`.
    required = [] if event_type is EventType.RECEIVED else ["subject"]
    specific: dict[str, Any] = {
        "type": "object",
        "properties": {
            "type": {"const": event_type.cloudevents_type},
            "dataschema": {
                "type": "string",
                "description": "Schema version of `data`, ending in MAJOR.MINOR; absent means "
                f"{SCHEMA_MAJOR}.{SCHEMA_MINOR}. A newer minor version is accepted, another major is "
                "refused.",
                "examples": [schema_uri(event_type)],
            },
            "data": _file_ref(data_schema_file(event_type)),
        },
    }
    if required:
        specific["required"] = required
    return {
        "name": event_type.value,
        "title": event_type.cloudevents_type,
        "summary": f"A commune system reports `{event_type.value}` for a dossier.",
        "contentType": "application/cloudevents+json",
        "payload": {"allOf": [_file_ref(ENVELOPE_FILE), specific]},
        "bindings": _kafka_key(INGRESS_KEY),
    }


def _messages() -> dict[str, dict[str, Any]]:
    messages = {f"ingress.{event_type.value}": _ingress_message(event_type) for event_type in EventType}
    messages["EventAccepted"] = {
        "name": "EventAccepted",
        "title": "Accepted event",
        "summary": "An incoming event intake validated, deduplicated and keyed by its dossier code.",
        "description": "The applicant's personal data is sealed (AES-256-GCM) in `applicant_sealed`, never "
        "in plaintext.",
        "contentType": "application/json",
        "payload": _file_ref(ACCEPTED_FILE),
        "bindings": _kafka_key(DOSSIER_KEY),
    }
    messages["DossierLifecycleEvent"] = {
        "name": "DossierLifecycleEvent",
        "title": "Canonical lifecycle event",
        "summary": "One per accepted event, with the dossier's state, due dates and timeliness.",
        "description": "`id` is stable (dossier code and sequence): a consumer that sees it twice knows it "
        "is a repeat.",
        "contentType": "application/json",
        "payload": _file_ref(LIFECYCLE_FILE),
        "bindings": _kafka_key(DOSSIER_KEY),
    }
    messages["RejectionRecorded"] = {
        "name": "RejectionRecorded",
        "title": "Refused input",
        "summary": "An input intake or resolution refused, with a machine-readable reason.",
        "description": "Names the input by source, id, subject and a SHA-256 of its bytes; never copies the "
        "payload, which may hold personal data.",
        "contentType": "application/json",
        "payload": _file_ref(REJECTION_FILE),
        "bindings": _kafka_key(REJECTION_KEY),
    }
    return messages


# Channel id -> (topic, {message key in the channel: component message name}).
def _channel_plan() -> dict[str, tuple[str, dict[str, str]]]:
    return {
        "ingress": (topics.INGRESS, {t.value: f"ingress.{t.value}" for t in EventType}),
        "accepted": (topics.ACCEPTED, {"eventAccepted": "EventAccepted"}),
        "lifecycle": (topics.LIFECYCLE, {"dossierLifecycleEvent": "DossierLifecycleEvent"}),
        "rejections": (topics.REJECTIONS, {"rejectionRecorded": "RejectionRecorded"}),
    }


INGRESS_NOTE: Final = (
    "Structured mode only: the record's value is the whole CloudEvent as JSON; CloudEvents binary mode "
    "(`ce_` headers) is not read. A record that is not valid JSON or not a valid event is refused on "
    f"`{topics.REJECTIONS}` and never stalls the partition."
)


def _channels() -> dict[str, dict[str, Any]]:
    notes = _topic_notes()
    channels: dict[str, dict[str, Any]] = {}
    for channel_id, (topic, members) in _channel_plan().items():
        description = notes[topic]
        if topic == topics.INGRESS:
            description += " " + INGRESS_NOTE
        channels[channel_id] = {
            "address": topic,
            "description": description,
            "messages": {key: _ref(f"#/components/messages/{name}") for key, name in members.items()},
            "bindings": {"kafka": {"topic": topic, "bindingVersion": KAFKA_BINDING_VERSION}},
        }
    return channels


# (operation id, actor, action, channel id, summary). The actor is a tag: one document describes the whole
# flow, so every operation says whose it is.
Operation = tuple[str, str, Literal["send", "receive"], str, str]
OPERATIONS: Final[tuple[Operation, ...]] = (
    ("communeSendsEvents", "commune-systems", "send", "ingress",
     "A commune's one-stop system publishes dossier lifecycle events."),
    ("intakeReceivesIngress", "intake", "receive", "ingress",
     "Intake authenticates, validates and deduplicates every event; the same path serves POST /v1/events."),
    ("intakeSendsAccepted", "intake", "send", "accepted",
     "Intake publishes each newly accepted event, keyed by its dossier code (minted when the commune sent "
     "none)."),
    ("intakeSendsRejections", "intake", "send", "rejections",
     "Intake publishes every event it refused, with the reason."),
    ("resolutionReceivesAccepted", "resolution", "receive", "accepted",
     "Resolution applies accepted events to each dossier's state machine and deadlines."),
    ("resolutionSendsLifecycle", "resolution", "send", "lifecycle",
     "Resolution publishes the canonical lifecycle event through its outbox."),
    ("resolutionSendsRejections", "resolution", "send", "rejections",
     "Resolution publishes events it refused, such as an impossible transition."),
    ("metricsReceivesLifecycle", "metrics", "receive", "lifecycle",
     "Metrics keeps live timeliness counters and flips dossiers to overdue at their deadline."),
    ("notifyReceivesLifecycle", "notify", "receive", "lifecycle",
     "Notify sends each citizen message owed, once, retrying failures."),
)

ACTORS: Final = {
    "commune-systems": "The one-stop software of each commune or department.",
    "intake": "The one door for commune systems (services/intake).",
    "resolution": "State machine, deadlines and the canonical lifecycle (services/resolution).",
    "metrics": "Live timeliness counters for the dashboards (services/metrics).",
    "notify": "Citizen notifications (services/notify).",
}


def _operations() -> dict[str, dict[str, Any]]:
    plan = _channel_plan()
    return {
        operation_id: {
            "action": action,
            "channel": _ref(f"#/channels/{channel_id}"),
            "summary": summary,
            "tags": [{"name": actor}],
            "messages": [_ref(f"#/channels/{channel_id}/messages/{key}") for key in plan[channel_id][1]],
        }
        for operation_id, actor, action, channel_id, summary in OPERATIONS
    }


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the platform's Kafka topics, as a plain dict."""
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "TTHC dossier timeliness platform: Kafka topics",
            "version": f"{SCHEMA_MAJOR}.{SCHEMA_MINOR}.0",
            "description": (
                "How dossier lifecycle events move between commune systems and the platform's services. "
                "The platform keys what it publishes by dossier code, so per-dossier order is partition "
                "order. Payload schemas live beside this file in `schemas/` and are generated from the code "
                "(`python -m shared.contract.schemas`); the HTTP side is in each service's OpenAPI document."
            ),
            "tags": [{"name": actor, "description": text} for actor, text in ACTORS.items()],
        },
        "servers": {
            "local": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "The local stack (`tthc up`) or docker compose, seen from the host.",
            },
        },
        "defaultContentType": "application/json",
        "channels": _channels(),
        "operations": _operations(),
        "components": {"messages": _messages()},
    }


def generate() -> dict[str, str]:
    """{path relative to the repository root: file text} for every contract document."""
    files = {schema_path(name): _json_text(schema) for name, schema in json_schemas().items()}
    files[ASYNCAPI_PATH] = yaml.safe_dump(asyncapi(), sort_keys=False, allow_unicode=True, width=110)
    return files


def write(root: Path) -> list[Path]:
    """Write the documents under `root`, removing schema files the models no longer produce; returns what
    changed."""
    files = generate()
    changed: list[Path] = []
    schema_dir = root / SCHEMA_DIR
    for stale in sorted(schema_dir.glob("*.json")) if schema_dir.is_dir() else []:
        if stale.relative_to(root).as_posix() not in files:
            stale.unlink()
            changed.append(stale)
    for relative, text in files.items():
        path = root / relative
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


if __name__ == "__main__":
    from shared.infra.paths import PROJECT_ROOT

    for path in write(PROJECT_ROOT):
        print(path.relative_to(PROJECT_ROOT))
