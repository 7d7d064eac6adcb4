"""nginx in front of the same emulator, as a second baseline for bench/proxy.py.

A reverse proxy that does no more than forward is what an HTTP proxy can cost at least; one
worker process, as the proxy has one event loop, with keep-alive to the upstream and
buffering off, as one would configure it for streams.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ondemand.processes import free_port, running

CONFIG = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream ollama {{
        server {upstream};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://ollama;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(upstream: str) -> Iterator[str | None]:
    """nginx's URL, forwarding to ``upstream`` (http://host:port); None when not installed."""
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if binary is None:
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "nginx.conf"
        host_port = upstream.removeprefix("http://").rstrip("/")
        conf.write_text(CONFIG.format(tmp=tmp, upstream=host_port, port=port))
        args = [binary, "-p", tmp, "-c", str(conf), "-g", "daemon off; master_process off;"]
        url = f"http://127.0.0.1:{port}"
        with running(args, ready_url=url + "/"):
            yield url


def version() -> str | None:
    import subprocess

    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        return None
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return out.stderr.strip().removeprefix("nginx version: ")
