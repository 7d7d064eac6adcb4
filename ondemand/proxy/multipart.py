"""multipart/form-data as ``/v1/audio/transcriptions`` takes it: read strictly, written anew.

Ollama reads the form with Go's ``Request.ParseMultipartForm`` and ``FormValue("model")``
(ollama/ollama ``middleware/openai.go``, ``TranscriptionMiddleware``, at fb30760, v0.33.0-rc2).
Two parsers never agree on every odd body: boundary lines with trailing blanks, bare LF line
ends, quoted-printable parts, RFC 2231 ``name*=`` parameters, a preamble that looks like a
boundary. So the proxy does not forward the client's bytes: it reads the form with the strict
rules below, refuses what they do not cover, and sends Ollama a form it wrote itself, whose
only ``model`` field is the one it checked.

The body is already in memory and bounded by ``ONDEMAND_MAX_BODY``; every step below is a
linear scan of it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(
    rf'\s*;\s*({_TOKEN})\s*=\s*(?:({_TOKEN})|"((?:[^"\\\x00-\x1f\x7f]|\\[\x20-\x7e])*)")'
)
# RFC 2046: 1 to 70 characters, not ending in a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_HEADER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PLAIN_ENCODINGS = {"7bit", "8bit", "binary"}
MAX_PARTS = 64  # a transcription sends a handful; thousands of tiny parts are not a client


class FormRefused(ValueError):
    """The form cannot be read without ambiguity; the message says why (no body content)."""


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


def parse_header_value(value: str) -> tuple[str, dict[str, str]]:
    """``type; a=b; c="d"``: the lower-cased first word and its parameters (names lower-cased).

    Refuses what Go's ``mime.ParseMediaType`` reads in ways this does not: repeated
    parameters, RFC 2231 ``name*`` forms, anything left over.
    """
    head, sep, rest = value.partition(";")
    kind = head.strip().lower()
    if not re.fullmatch(rf"{_TOKEN}(?:/{_TOKEN})?", kind):
        raise FormRefused("a header value the proxy cannot read")
    params: dict[str, str] = {}
    rest, pos = sep + rest, 0
    while rest[pos:].strip() not in ("", ";"):
        match = _PARAM.match(rest, pos)
        if match is None:
            raise FormRefused("a header parameter the proxy cannot read")
        name = match.group(1).lower()
        if "*" in name:
            raise FormRefused("encoded (RFC 2231) header parameters are not accepted")
        if name in params:
            raise FormRefused(f"the header parameter {name!r} is given twice")
        token, quoted = match.group(2), match.group(3)
        params[name] = token if token is not None else re.sub(r"\\(.)", r"\1", quoted)
        pos = match.end()
    return kind, params


def boundary_of(content_type: str) -> str:
    kind, params = parse_header_value(content_type)
    if kind != "multipart/form-data":
        raise FormRefused("the body must be multipart/form-data")
    boundary = params.get("boundary")
    if boundary is None or not _BOUNDARY.fullmatch(boundary):
        raise FormRefused("the multipart boundary is missing or not valid")
    return boundary


def parse_form(body: bytes, content_type: str) -> list[Part]:
    """The parts of a form; raises FormRefused for anything not plainly a form."""
    delimiter = b"--" + boundary_of(content_type).encode("ascii")
    if not body.startswith(delimiter):
        raise FormRefused("the body does not start with its boundary")
    separator = b"\r\n" + delimiter
    parts: list[Part] = []
    pos = len(delimiter)
    while True:
        if body.startswith(b"--", pos):
            return parts  # the close delimiter; what follows (the epilogue) is ignored
        if not body.startswith(b"\r\n", pos):
            raise FormRefused("a boundary line has trailing characters")
        if len(parts) == MAX_PARTS:
            raise FormRefused(f"the form has more than {MAX_PARTS} parts")
        head_end = body.find(b"\r\n\r\n", pos)
        end = body.find(separator, pos)
        if end < 0:
            raise FormRefused("the form ends without its closing boundary")
        if head_end < 0 or head_end + 4 > end:
            raise FormRefused("a part has no blank line after its headers")
        part = _part(body[pos + 2 : head_end + 2], body[head_end + 4 : end])
        if part is not None:
            parts.append(part)
        pos = end + len(separator)


def _part(head: bytes, data: bytes) -> Part | None:
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n")[:-1]:
        name, colon, value = line.partition(b":")
        if not colon or not _HEADER_NAME.fullmatch(name):
            raise FormRefused("a part header the proxy cannot read")  # incl. folded lines
        key = name.decode("ascii").lower()
        if key in headers:
            raise FormRefused(f"a part has two {key!r} headers")
        try:
            headers[key] = value.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise FormRefused("a part header is not UTF-8") from None
    if headers.get("content-transfer-encoding", "7bit").lower() not in _PLAIN_ENCODINGS:
        raise FormRefused("encoded parts (Content-Transfer-Encoding) are not accepted")
    disposition = headers.get("content-disposition")
    if disposition is None:
        return None  # Go skips a part with no field name; so does the form sent on
    kind, params = parse_header_value(disposition)
    if kind != "form-data" or not params.get("name"):
        return None
    filename = params.get("filename")
    content_type = headers.get("content-type")
    if content_type is not None and not re.fullmatch(r"[\x20-\x7e]*", content_type):
        raise FormRefused("a part's Content-Type the proxy cannot read")
    # Go treats a part with a filename as a file, not a value: an empty one stays a value.
    return Part(params["name"], data, filename or None, content_type)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_form(parts: list[Part]) -> tuple[bytes, str]:
    """The form as bytes, and its Content-Type (with a boundary that occurs in no part)."""
    boundary = "ondemand-" + secrets.token_hex(16)
    while any(boundary.encode() in p.data for p in parts):  # 2^-128 per part, but exact
        boundary = "ondemand-" + secrets.token_hex(16)
    delimiter = b"--" + boundary.encode()
    chunks: list[bytes] = []
    for part in parts:
        disposition = f"form-data; name={_quote(part.name)}"
        if part.filename is not None:
            disposition += f"; filename={_quote(part.filename)}"
        head = f"Content-Disposition: {disposition}\r\n"
        if part.content_type:
            head += f"Content-Type: {part.content_type}\r\n"
        chunks += [delimiter, b"\r\n", head.encode("utf-8"), b"\r\n", part.data, b"\r\n"]
    chunks += [delimiter, b"--\r\n"]
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"
