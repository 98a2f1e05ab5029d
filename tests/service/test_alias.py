"""AliasBook: resolution from a copy that follows Redis within its refresh."""

from __future__ import annotations

import pytest

from dao.alias import AliasStore
from dao.keys import Keys
from model.alias import Alias
from service.alias import AliasBook, AliasNotFound, delete_alias, set_alias, with_model, with_served_model
from service.shape import shape_request


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


@pytest.fixture
def book(redis, ticks) -> AliasBook:
    return AliasBook(AliasStore(redis, Keys("nvllm")), refresh=0.5, clock=ticks)


def test_an_alias_resolves_to_its_model_and_others_to_none(book):
    set_alias(book, {"alias": "gpt-4o", "model": "Qwen/Qwen2.5-72B-Instruct"})
    assert book.resolve("gpt-4o") == "Qwen/Qwen2.5-72B-Instruct"
    assert book.resolve("Qwen/Qwen2.5-72B-Instruct") is None
    assert book.resolve(None) is None and book.resolve(["gpt-4o"]) is None


def test_another_instances_write_shows_within_the_refresh(redis, book, ticks):
    other = AliasBook(AliasStore(redis, Keys("nvllm")), refresh=0.5, clock=ticks)
    assert book.resolve("gpt-4o") is None
    set_alias(other, {"alias": "gpt-4o", "model": "m"})
    assert book.resolve("gpt-4o") is None  # its copy is younger than the refresh
    ticks.now += 0.6
    assert book.resolve("gpt-4o") == "m"


def test_while_redis_is_down_the_last_copy_resolves(book, server, ticks):
    set_alias(book, {"alias": "gpt-4o", "model": "m"})
    assert book.resolve("gpt-4o") == "m"
    server.connected = False
    ticks.now += 10
    assert book.resolve("gpt-4o") == "m"


def test_delete_of_an_unknown_alias_is_not_found(book):
    with pytest.raises(AliasNotFound):
        delete_alias(book, "nope")


def test_the_rewritten_body_carries_the_served_model():
    assert with_model({"model": "gpt-4o", "prompt": "é"}, "m") == '{"model":"m","prompt":"é"}'.encode()


def test_an_upload_names_the_served_model_in_its_form_and_keeps_its_file():
    audio = bytes(range(256)) * 8
    body = (b"--xy\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n" + audio
            + b"\r\n--xy\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--xy--\r\n")
    shaped = shape_request("POST", "/v1/audio/transcriptions", "", "multipart/form-data; boundary=xy", body, {})
    assert with_served_model(shaped, "openai/whisper-large-v3") == body.replace(b"whisper-1",
                                                                                 b"openai/whisper-large-v3")
    shaped = shape_request("POST", "/v1/embeddings", "", "application/json", b'{"model": "e", "input": "x"}', {})
    assert with_served_model(shaped, "m") == b'{"model":"m","input":"x"}'


def test_listing_is_sorted(book):
    set_alias(book, {"alias": "b", "model": "m"})
    set_alias(book, {"alias": "a", "model": "m", "listed": False})
    from service.alias import list_aliases

    assert list_aliases(book) == [Alias("a", "m", False), Alias("b", "m")]
