"""The Kafka settings every client takes from one helper: security, and how producers pick partitions."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from faststream.security import SASLScram256, SASLScram512
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.intake.ingress import KEY_HEADER, SIGNATURE_HEADER, sign
from services.intake.keys import new_key, record_signature
from shared.infra.secure_kafka import platform_acls
from shared.kafka import broker_security, client_options, partition_by_key, servers
from shared.settings import CommonSettings

pytestmark = pytest.mark.unit

SASL = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "intake", "KAFKA_SASL_PASSWORD": "s3cret"}


def test_without_sasl_settings_clients_get_no_security_options(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SASL:
        monkeypatch.delenv(name, raising=False)
    settings = CommonSettings.model_validate({})
    assert client_options(settings) == {}
    assert client_options(None) == {}
    assert broker_security(settings) is None


def test_sasl_settings_become_aiokafka_options_and_a_faststream_security_object() -> None:
    settings = CommonSettings.model_validate(SASL)
    assert client_options(settings) == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                                        "sasl_plain_username": "intake", "sasl_plain_password": "s3cret"}
    security = broker_security(settings)
    assert isinstance(security, SASLScram512)
    assert (security.username, security.password) == ("intake", "s3cret")
    assert "s3cret" not in repr(settings)
    other = CommonSettings.model_validate({**SASL, "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"})
    assert isinstance(broker_security(other), SASLScram256)
    tls = client_options(CommonSettings.model_validate({**SASL, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}))
    assert tls["ssl_context"] is not None


@pytest.mark.parametrize("missing", ["KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"])
def test_sasl_without_credentials_is_refused_at_start(missing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(missing, raising=False)
    with pytest.raises(ValidationError, match="needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        CommonSettings.model_validate({k: v for k, v in SASL.items() if k != missing})


def test_a_cluster_s_bootstrap_servers_are_each_their_own_host() -> None:
    assert servers("b1:9092,b2:9092, b3:9092") == ["b1:9092", "b2:9092", "b3:9092"]
    assert servers("127.0.0.1:9092") == ["127.0.0.1:9092"]


def test_a_signature_is_bound_to_the_key_and_the_bytes() -> None:
    _, key, _ = new_key()
    _, other, _ = new_key()
    headers = dict(sign(key, b"payload"))
    assert set(headers) == {KEY_HEADER, SIGNATURE_HEADER}
    assert headers[KEY_HEADER].decode() == key.split("_")[1]
    assert record_signature(key, b"payload") == (key.split("_")[1], bytes.fromhex(headers[SIGNATURE_HEADER].decode()))
    assert record_signature(key, b"payload!") != record_signature(key, b"payload")
    assert record_signature(other, b"payload") != record_signature(key, b"payload")
    with pytest.raises(ValueError, match="not an API key"):
        sign("not-a-key", b"payload")


def test_a_commune_may_only_write_ingress_and_no_service_may_create_topics() -> None:
    acls = platform_acls(["xa-1"])
    assert {(a.resource, a.name, a.operation) for a in acls if a.user == "xa-1"} == {
        ("TOPIC", "tthc.ingress.v1", "WRITE"), ("TOPIC", "tthc.ingress.v1", "DESCRIBE")}
    assert not [a for a in acls if a.operation in {"CREATE", "ALTER", "DELETE", "ALL"}]
    assert not [a for a in acls if a.user in {"metrics", "notify"} and a.operation == "WRITE"]


@given(keys=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=30), partitions=st.integers(1, 64))
def test_records_go_to_the_partition_kafkas_default_partitioner_picks(keys: list[bytes], partitions: int) -> None:
    # Consumers elsewhere (and the Java clients) expect a dossier's events on murmur2(code) % partitions.
    every = list(range(partitions))
    for key in keys + keys:  # the second time from the remembered hash
        assert partition_by_key(key, every, every) == DefaultPartitioner()(key, every, every)
