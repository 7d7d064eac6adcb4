"""The transcription form and the preloaded models' keep_alive, below the HTTP layer; and a
real OpenAI client's form through a real proxy."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from ondemand.modelnames import canonical
from ondemand.proxy import multipart
from ondemand.proxy.auth import Identity, KeyEntry, sha256_form
from ondemand.proxy.policy import KeepAlivePolicy, Rejected, Residency, prepare
from ondemand.serving import BackgroundServer
from tests.conftest import ADMIN_KEY, ProxyFactory
from tests.proxy.recorder import Recorder

LIMITED = Identity(
    "ci", admin=False, entry=KeyEntry("ci", b"y" * 32, models=frozenset({"llama3.2:latest"}))
)
OPEN = Identity("ops", admin=False, entry=KeyEntry("ops", b"x" * 32))
ADMIN = Identity("admin", admin=True)
NONE = KeepAlivePolicy()
PINNED = Residency(frozenset({canonical("llama3.2")}), -1)
FORM = "/v1/audio/transcriptions"


def test_a_form_is_written_anew_with_its_fields_files_and_escapes() -> None:
    parts = [
        multipart.Part("model", b"llama3.2"),
        multipart.Part("file", b"\r\n--x\r\n\x00\xff", 'a "b"\\c.wav', "audio/wav"),
    ]
    body, content_type = multipart.write_form(parts)
    assert multipart.parse_form(body, content_type) == parts


@pytest.mark.parametrize(
    ("content_type", "problem"),
    [
        ("multipart/form-data", "boundary is missing"),
        ("multipart/form-data; boundary=a; boundary=b", "given twice"),
        ("multipart/form-data; boundary*=UTF-8''a", "RFC 2231"),
        ("multipart/mixed; boundary=a", "must be multipart/form-data"),
        ("multipart/form-data; boundary=" + "a" * 71, "not valid"),
        ("multipart/form-data; boundary=a b", "cannot read"),
    ],
)
def test_content_types_that_are_not_plainly_a_form_are_refused(
    content_type: str, problem: str
) -> None:
    with pytest.raises(multipart.FormRefused, match=problem):
        multipart.parse_form(b"--a--\r\n", content_type)


def test_a_quoted_boundary_and_upper_case_type_are_read() -> None:
    body = b'--a b\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--a b--\r\n'
    parts = multipart.parse_form(body, 'Multipart/Form-Data; BOUNDARY="a b"')
    assert parts == [multipart.Part("model", b"m")]


def test_too_many_parts_are_refused() -> None:
    body = multipart.write_form([multipart.Part(f"f{i}", b"") for i in range(100)])
    with pytest.raises(multipart.FormRefused, match="more than"):
        multipart.parse_form(*body)


def _form(model: str) -> tuple[bytes, str]:
    return multipart.write_form(
        [multipart.Part("model", model.encode()), multipart.Part("file", b"RIFF", "a.wav")]
    )


def test_open_keys_forms_go_on_untouched_and_limited_ones_are_checked() -> None:
    body, content_type = _form("mistral")
    untouched = prepare(FORM, body, OPEN, NONE, content_type=content_type)
    assert (untouched.body, untouched.content_type) == (body, None)
    with pytest.raises(Rejected) as info:
        prepare(FORM, body, LIMITED, NONE, content_type=content_type)
    assert info.value.status == 403
    body, content_type = _form("LLAMA3.2:latest")
    prepared = prepare(FORM, body, LIMITED, NONE, content_type=content_type)
    assert prepared.model == "LLAMA3.2:latest"
    assert prepared.content_type is not None
    assert prepared.content_type != content_type


def test_a_compressed_body_is_refused_for_a_limited_key() -> None:
    raw = b'{"model":"llama3.2","input":"x"}'
    with pytest.raises(Rejected) as info:
        prepare("/v1/responses", raw, LIMITED, NONE, content_encoding="zstd")
    assert info.value.status == 403
    assert prepare("/v1/responses", raw, OPEN, NONE, content_encoding="zstd").body == raw


@pytest.mark.parametrize("sent", [0, "0", "0s", -1, "-1m", "5m", 1e300, None, "garbage"], ids=repr)
def test_preloaded_models_keep_the_servers_keep_alive_for_keys_that_are_not_admin(
    sent: object,
) -> None:
    body: dict[str, object] = {"model": "Llama3.2:latest", "prompt": ""}
    if sent is not None:
        body["Keep_Alive"] = sent
    raw = json.dumps(body).encode()
    cap = KeepAlivePolicy(cap="10m", cap_seconds=600.0)
    for path in ("/api/generate", "/api/chat", "/api/embed", "/api/embeddings"):
        out = json.loads(prepare(path, raw, OPEN, cap, residency=PINNED).body)
        assert [k for k in out if k.lower() == "keep_alive"] == ["keep_alive"]
        assert out["keep_alive"] == -1
    # An admin key decides for itself (within the cap); other models follow the cap only.
    assert prepare("/api/generate", raw, ADMIN, NONE, residency=PINNED).body == raw
    other = raw.replace(b"Llama3.2", b"qwen3")
    assert prepare("/api/generate", other, OPEN, NONE, residency=PINNED).body == other


def test_an_unreadable_body_is_refused_when_preloaded_models_are_pinned() -> None:
    raw = b'{"model":"llama3.2","keep_alive":0} trailing'  # Go's decoder reads the first value
    with pytest.raises(Rejected):
        prepare("/api/generate", raw, OPEN, NONE, residency=PINNED)


def test_the_openai_client_transcribes_through_a_limited_key(
    start_proxy: ProxyFactory, recorder: tuple[Recorder, BackgroundServer], tmp_path: Path
) -> None:
    key = "odk_limited_0123456789abcdef"
    keys = tmp_path / "keys.yml"
    keys.write_text(f"- name: ci\n  sha256: {sha256_form(key)}\n  models: [llama3.2]\n")
    app, upstream = recorder
    proxy = start_proxy(
        upstream.url, {"ONDEMAND_ADMIN_KEY": ADMIN_KEY, "ONDEMAND_KEYS_FILE": str(keys)}
    )
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)
    audio = ("a.wav", b"RIFF" + bytes(range(256)), "audio/wav")
    with pytest.raises(openai.PermissionDeniedError):
        client.audio.transcriptions.create(model="mistral", file=audio)
    assert app.seen == []
    client.audio.transcriptions.create(model="llama3.2", file=audio, language="en")
    (seen,) = app.seen
    content_type = (seen.header(b"content-type") or b"").decode()
    parts = multipart.parse_form(seen.body, content_type)
    assert {p.name: p.data for p in parts} == {
        "model": b"llama3.2",
        "language": b"en",
        "file": audio[1],
    }
