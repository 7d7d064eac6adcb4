"""The vendors' published API descriptions, vendored with their source (``*.SOURCE.md``), and
the request validation the emulators run against them (``openapi``)."""
