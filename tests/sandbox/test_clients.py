"""The official ollama and openai clients work against the emulator as against Ollama."""

from __future__ import annotations

import math

import ollama
import openai
import pytest

from ondemand.sandbox.ollama import Emulator
from ondemand.sandbox.ollama.text import REPLY
from tests.sandbox.conftest import Serve

FULL_REPLY = "".join(REPLY)


def test_ollama_chat_streams_the_reply_then_a_final_line_with_metrics(
    emulator: tuple[Emulator, str],
) -> None:
    _, url = emulator
    with ollama.Client(host=url) as client:
        messages = [{"role": "user", "content": "Why is the sky blue?"}]
        parts = list(client.chat(model="llama3.2", messages=messages, stream=True))
        assert "".join(p.message.content or "" for p in parts) == FULL_REPLY
        assert all(not p.done for p in parts[:-1])
        final = parts[-1]
        assert final.done
        assert final.done_reason == "stop"
        assert final.eval_count == len(REPLY)
        assert final.prompt_eval_count
        assert final.prompt_eval_count > 0
        assert final.total_duration
        assert final.eval_duration
        assert final.load_duration
        assert final.model == "llama3.2"

        whole = client.chat(model="llama3.2:latest", messages=messages)
        assert whole.message.content == FULL_REPLY
        assert whole.message.role == "assistant"
        assert whole.model == "llama3.2:latest"


def test_ollama_generate_honours_num_predict(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    with ollama.Client(host=url) as client:
        answer = client.generate(model="llama3.2", prompt="hi")
        assert answer.response == FULL_REPLY
        assert answer.done_reason == "stop"
        assert answer.context
        assert all(isinstance(t, int) for t in answer.context)
        short = client.generate(model="llama3.2", prompt="hi", options={"num_predict": 5})
        assert short.response == "".join(REPLY[:5])
        assert short.done_reason == "length"
        assert short.eval_count == 5


def test_ollama_embed_gives_normalised_deterministic_vectors(
    emulator: tuple[Emulator, str],
) -> None:
    _, url = emulator
    with ollama.Client(host=url) as client:
        first = client.embed(model="nomic-embed-text", input=["hello", "world"])
        again = client.embed(model="nomic-embed-text", input="hello")
        assert len(first.embeddings) == 2
        assert len(first.embeddings[0]) == 768
        assert list(again.embeddings[0]) == list(first.embeddings[0])
        assert first.embeddings[0] != first.embeddings[1]
        for vector in first.embeddings:
            assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-6)
        cut = client.embed(model="nomic-embed-text", input="hello", dimensions=64)
        assert len(cut.embeddings[0]) == 64
        assert math.isclose(math.sqrt(sum(v * v for v in cut.embeddings[0])), 1.0, rel_tol=1e-6)


def test_ollama_list_ps_and_show(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    with ollama.Client(host=url) as client:
        names = [m.model for m in client.list().models]
        assert names == ["llama3.2:latest", "nomic-embed-text:latest"]
        assert client.ps().models == []
        client.generate(model="llama3.2", keep_alive=-1)
        running = client.ps().models
        assert [m.model for m in running] == ["llama3.2:latest"]
        assert running[0].size_vram == running[0].size
        assert running[0].expires_at is not None
        assert running[0].expires_at.year > 2300
        shown = client.show("llama3.2")
        assert shown.capabilities == ["completion"]
        assert shown.details.family == "llama"
        assert shown.modelinfo is not None
        assert "general.architecture" in shown.modelinfo
        assert client.show("nomic-embed-text").capabilities == ["embedding"]


def test_ollama_pull_then_delete(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    with ollama.Client(host=url) as client:
        statuses = [p.status for p in client.pull("qwen3:0.6b", stream=True)]
        assert statuses[0] == "pulling manifest"
        assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
        assert "qwen3:0.6b" in [m.model for m in client.list().models]
        assert client.pull("qwen3:0.6b").status == "success"
        assert client.delete("qwen3:0.6b").status == "success"
        assert "qwen3:0.6b" not in [m.model for m in client.list().models]
        with pytest.raises(ollama.ResponseError) as missing:
            client.delete("qwen3:0.6b")
        assert missing.value.status_code == 404
        assert missing.value.error == "model 'qwen3:0.6b' not found"


def test_ollama_errors_carry_status_and_message(serve: Serve) -> None:
    _, url = serve(pull_fail=["nothere"])
    with ollama.Client(host=url) as client:
        with pytest.raises(ollama.ResponseError) as missing:
            client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
        assert (missing.value.status_code, missing.value.error) == (404, "model 'nope' not found")
        with pytest.raises(ollama.ResponseError) as embed_only:
            client.generate(model="nomic-embed-text", prompt="hi")
        assert embed_only.value.status_code == 400
        assert embed_only.value.error == '"nomic-embed-text" does not support generate'
        with pytest.raises(ollama.ResponseError) as failed:
            client.pull("nothere")
        assert failed.value.status_code == 500
        assert failed.value.error == "pull model manifest: file does not exist"
        with pytest.raises(ollama.ResponseError) as streamed:
            list(client.pull("nothere", stream=True))
        assert streamed.value.error == "pull model manifest: file does not exist"


def test_openai_chat_stream_with_usage(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    with openai.OpenAI(base_url=url + "/v1", api_key="x") as client:
        chunks = list(
            client.chat.completions.create(
                model="llama3.2",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        with_choices = [c for c in chunks if c.choices]
        assert with_choices[0].choices[0].delta.role == "assistant"
        assert all(c.choices[0].delta.role is None for c in with_choices[1:])
        text = "".join(c.choices[0].delta.content or "" for c in with_choices)
        assert text == FULL_REPLY
        assert [c.choices[0].finish_reason for c in with_choices][-1] == "stop"
        assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
        usage_chunk = chunks[-1]
        assert usage_chunk.choices == []
        assert usage_chunk.usage is not None
        assert usage_chunk.usage.completion_tokens == len(REPLY)
        assert {c.object for c in chunks} == {"chat.completion.chunk"}
        assert len({c.id for c in chunks}) == 1


def test_openai_chat_without_stream_and_max_tokens(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    with openai.OpenAI(base_url=url + "/v1", api_key="x") as client:
        answer = client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert answer.object == "chat.completion"
        assert answer.id.startswith("chatcmpl-")
        assert answer.system_fingerprint == "fp_ollama"
        assert answer.choices[0].message.content == "".join(REPLY[:4])
        assert answer.choices[0].finish_reason == "length"
        assert answer.usage is not None
        assert answer.usage.completion_tokens == 4


def test_openai_completions(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    with openai.OpenAI(base_url=url + "/v1", api_key="x") as client:
        whole = client.completions.create(model="llama3.2", prompt="Say hi")
        assert whole.object == "text_completion"
        assert whole.id.startswith("cmpl-")
        assert whole.choices[0].text == FULL_REPLY
        streamed = list(client.completions.create(model="llama3.2", prompt="Say hi", stream=True))
        assert "".join(c.choices[0].text for c in streamed) == FULL_REPLY
        assert streamed[-1].choices[0].finish_reason == "stop"


def test_openai_embeddings_float_and_base64(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    with openai.OpenAI(base_url=url + "/v1", api_key="x") as client:
        # The SDK asks for base64 unless told otherwise, and decodes it itself.
        decoded = client.embeddings.create(model="nomic-embed-text", input=["a", "b"])
        floats = client.embeddings.create(
            model="nomic-embed-text", input=["a", "b"], encoding_format="float"
        )
        assert [d.index for d in floats.data] == [0, 1]
        assert len(floats.data[0].embedding) == 768
        for got, want in zip(decoded.data[0].embedding, floats.data[0].embedding, strict=True):
            assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-7)
        assert floats.usage.prompt_tokens > 0


def test_openai_models_and_errors(serve: Serve) -> None:
    _, url = serve()
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        models = client.models.list()
        assert [m.id for m in models.data] == ["llama3.2:latest", "nomic-embed-text:latest"]
        assert models.data[0].owned_by == "library"
        assert client.models.retrieve("llama3.2").id == "llama3.2"
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}]
            )
        assert missing.value.body == {
            "message": "model 'nope' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
        with pytest.raises(openai.BadRequestError) as empty:
            client.chat.completions.create(model="llama3.2", messages=[])
        assert "[] is too short - 'messages'" in str(empty.value)
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("nope")
    _, bare = serve(models={})
    with openai.OpenAI(base_url=bare + "/v1", api_key="x") as empty_client:
        # Ollama sends "data": null here, not [].
        assert empty_client.models.list().data is None
