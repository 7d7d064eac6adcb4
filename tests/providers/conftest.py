"""Every request our provider clients send in these tests conforms to the vendor's published
API document: the emulators refuse what the document refuses, and this records each refusal
so that a test whose client was refused fails here even if it expected an error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ondemand.sandbox.http import FrontEnd, HttpError, Request, Route


@pytest.fixture(autouse=True)
def requests_conform_to_the_vendor_documents(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    refused: list[str] = []
    check = FrontEnd._validate

    def recording(front: FrontEnd[object], route: Route[object], request: Request) -> None:
        try:
            check(front, route, request)
        except HttpError as exc:
            refused.append(f"{request.method} {request.path}: {exc.text}")
            raise

    monkeypatch.setattr(FrontEnd, "_validate", recording)
    yield
    assert refused == [], "a provider client sent a request the vendor's document refuses"
