"""The policy applied to request bodies: models a key may use, keep-alive, /v1 usage."""

from __future__ import annotations

import json
import math

import pytest

from ondemand.errors import ConfigError
from ondemand.modelnames import canonical
from ondemand.proxy.auth import Identity, KeyEntry
from ondemand.proxy.policy import (
    KeepAlivePolicy,
    Rejected,
    check_path_model,
    filter_listing,
    keep_alive_seconds,
    prepare,
)

OPEN = Identity("ops", admin=False, entry=KeyEntry("ops", b"x" * 32))
LIMITED = Identity(
    "ci",
    admin=False,
    entry=KeyEntry("ci", b"y" * 32, models=frozenset({canonical("llama3"),
                                                       canonical("hf.co/org/repo:Q4_K_M")})),
)  # fmt: skip
NONE = KeepAlivePolicy()


def _body(out: bytes) -> dict[str, object]:
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize(
    "model", ["llama3", "LLAMA3", "llama3:latest", "Llama3:LATEST", "library/llama3",
              "registry.ollama.ai/library/llama3:latest", "hf.co/org/repo:Q4_K_M",
              "HF.CO/org/repo:q4_k_m"],
)  # fmt: skip
def test_allowed_model_spellings_pass(model: str) -> None:
    raw = json.dumps({"model": model, "prompt": "hi"}).encode()
    prepared = prepare("/api/generate", raw, LIMITED, NONE)
    assert prepared.body == raw  # nothing to rewrite: the bytes go on untouched
    assert prepared.model == model


@pytest.mark.parametrize(
    "body",
    [
        {"model": "llama3:8b"},
        {"model": "llama3.1"},
        {"model": "mistral"},
        {"model": "hf.co/org/repo"},  # another tag than the allowed Q4_K_M
        {"model": "evil/llama3"},
        {"MODEL": "mistral"},  # Go's decoder reads field names without regard to case
        {"model": "llama3", "Model": "mistral"},
        {"model": "llama3", "name": "mistral"},
    ],
)
def test_models_outside_the_allow_list_are_refused_by_name(body: dict[str, object]) -> None:
    path = "/api/show" if "name" in body else "/api/chat"
    with pytest.raises(Rejected) as info:
        prepare(path, json.dumps(body).encode(), LIMITED, NONE)
    assert info.value.status == 403
    assert "is not allowed for this key" in info.value.message
    assert "ci" not in info.value.message.replace("is not allowed", "")


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1,2]", b"", b'{"model": "llama3"} {"model": "mistral"}',
     b'{"model": "mistral", "x": "\\udcff"}' + b"\xff"],
    ids=["garbage", "array", "empty", "two-values", "bad-utf8"],
)  # fmt: skip
def test_a_restricted_key_gets_400_for_a_body_it_cannot_be_checked_on(raw: bytes) -> None:
    # Ollama's Go decoder reads the first of two values and replaces bad UTF-8: forwarding
    # what this side cannot read would let those tricks past the allow-list.
    with pytest.raises(Rejected) as info:
        prepare("/v1/chat/completions", raw, LIMITED, NONE)
    assert info.value.status == 400


def test_an_unrestricted_key_passes_odd_bodies_to_ollama_unchanged() -> None:
    assert prepare("/api/chat", b"not json", OPEN, NONE).body == b"not json"
    assert prepare("/api/chat", b'{"messages": []}', OPEN, NONE).model is None
    with pytest.raises(Rejected) as refused:  # default deny: a limited key must name a model
        prepare("/api/chat", b'{"messages": []}', LIMITED, NONE)
    assert refused.value.status == 403
    with pytest.raises(Rejected):
        prepare("/api/chat", b'{"model": 7}', LIMITED, NONE)


def test_v1_models_retrieve_checks_the_path() -> None:
    check_path_model("/v1/models/llama3", LIMITED)
    with pytest.raises(Rejected):
        check_path_model("/v1/models/mistral:7b", LIMITED)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(300, 300.0), (1.5, 1.5), (-1, math.inf), (0, 0.0), ("10m", 600.0), ("1h30m", 5400.0),
     ("-1m", math.inf), ("0", 0.0), ("1.5h", 5400.0), ("90s", 90.0), ("-1", None),
     ("300", None), ("forever", None), (True, None), (None, None), ([1], None)],
)  # fmt: skip
def test_keep_alive_is_read_as_ollama_reads_it(value: object, seconds: float | None) -> None:
    assert keep_alive_seconds(value) == seconds


CAPPED = KeepAlivePolicy.from_env({"ONDEMAND_MAX_KEEP_ALIVE": "30m"})


@pytest.mark.parametrize("sent", [-1, -1.0, "-1m", "24h", 1e300, 86400, "100h"], ids=str)
def test_keep_alive_beyond_the_cap_is_capped(sent: object) -> None:
    raw = json.dumps({"model": "llama3", "keep_alive": sent}).encode()
    assert _body(prepare("/api/generate", raw, OPEN, CAPPED).body)["keep_alive"] == "30m"


@pytest.mark.parametrize(
    "raw",
    [b'{"model":"llama3","KEEP_ALIVE":-1,"Keep_Alive":"5m"}',
     # Go takes the last occurrence (-1); a dict keeps the first place with the last value.
     b'{"model":"llama3","keep_alive":-1,"KEEP_ALIVE":"5m","keep_alive":-1}'],
)  # fmt: skip
def test_keep_alive_variants_in_any_case_are_all_replaced(raw: bytes) -> None:
    body = _body(prepare("/api/chat", raw, OPEN, CAPPED).body)
    assert {k: v for k, v in body.items() if k.lower() == "keep_alive"} == {"keep_alive": "30m"}


@pytest.mark.parametrize("sent", [0, "5m", 1800, "30m", "-1", "nonsense"])
def test_keep_alive_within_the_cap_or_refused_by_ollama_is_left_alone(sent: object) -> None:
    raw = json.dumps({"model": "llama3", "keep_alive": sent}).encode()
    assert prepare("/api/embed", raw, OPEN, CAPPED).body == raw


def test_a_default_keep_alive_is_injected_where_none_was_sent_and_capped() -> None:
    policy = KeepAlivePolicy.from_env(
        {"ONDEMAND_KEEP_ALIVE": "2h", "ONDEMAND_MAX_KEEP_ALIVE": "1h"}
    )
    assert policy.default == "1h"
    body = _body(prepare("/api/chat", b'{"model":"llama3"}', OPEN, policy).body)
    assert body["keep_alive"] == "1h"
    seconds = KeepAlivePolicy.from_env({"ONDEMAND_KEEP_ALIVE": "600"})
    assert _body(prepare("/api/chat", b'{"model":"x"}', OPEN, seconds).body)["keep_alive"] == 600
    # /v1 cannot carry keep_alive: its bodies are left as they are.
    raw = b'{"model":"llama3","messages":[]}'
    assert prepare("/v1/chat/completions", raw, OPEN, policy).body == raw


@pytest.mark.parametrize(
    ("env", "message"),
    [({"ONDEMAND_MAX_KEEP_ALIVE": "-1"}, "cannot be forever"),
     ({"ONDEMAND_MAX_KEEP_ALIVE": "soon"}, "must be a duration"),
     ({"ONDEMAND_KEEP_ALIVE": "-1s5"}, "must be a duration")],
)  # fmt: skip
def test_bad_keep_alive_settings_are_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KeepAlivePolicy.from_env(env)


def test_v1_streams_ask_ollama_for_usage_and_mark_it_for_stripping() -> None:
    raw = b'{"model":"llama3","messages":[],"stream":true}'
    prepared = prepare("/v1/chat/completions", raw, OPEN, NONE)
    assert prepared.strip_usage
    assert _body(prepared.body)["stream_options"] == {"include_usage": True}
    asked = b'{"model":"llama3","stream":true,"stream_options":{"include_usage":true}}'
    kept = prepare("/v1/chat/completions", asked, OPEN, NONE)
    assert (kept.strip_usage, kept.body) == (False, asked)
    other = b'{"model":"x","stream":true,"Stream_Options":{"foo":1,"include_usage":false}}'
    merged = _body(prepare("/v1/completions", other, OPEN, NONE).body)
    assert merged["stream_options"] == {"foo": 1, "include_usage": True}
    assert "Stream_Options" not in merged
    plain = prepare("/v1/chat/completions", b'{"model":"x","messages":[]}', OPEN, NONE)
    assert (plain.stream, plain.strip_usage) == (False, False)


def test_model_lists_show_a_restricted_key_only_its_models() -> None:
    names = ["llama3:latest", "mistral:latest", "hf.co/org/repo:Q4_K_M"]
    tags = {"models": [{"name": n, "model": n} for n in names]}
    out = json.loads(filter_listing("/api/tags", json.dumps(tags).encode(), LIMITED))
    assert [m["name"] for m in out["models"]] == ["llama3:latest", "hf.co/org/repo:Q4_K_M"]
    v1 = {"object": "list", "data": [{"id": "mistral:latest"}, {"id": "llama3:latest"}]}
    assert _body(filter_listing("/v1/models", json.dumps(v1).encode(), LIMITED))["data"] == [
        {"id": "llama3:latest"}
    ]
    assert filter_listing("/api/ps", b"garbage", LIMITED) == b"garbage"
