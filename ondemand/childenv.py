"""What environment a child process gets: the names it reads, never the whole environment.

Two children have one: the ``ondemand serve`` that the local provider starts on this
machine, and the Ollama that ``ondemand serve`` supervises. Each gets only the variables
listed here, plus those the user names in ``ONDEMAND_PASS_ENV`` (``pass_env`` in
ondemand.yml): the caller's cloud, Hugging Face or database credentials stay with the
caller, and the server's keys stay with the server. docs/serve.md and docs/image.md list
both allow-lists.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Final

PASS_ENV: Final = "ONDEMAND_PASS_ENV"

# What any program needs to run, find files, speak the locale, trust certificates and go
# through the machine's proxy (Ollama pulls models through HTTP(S)_PROXY; Go reads both
# spellings).
SYSTEM: Final = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR",
    "SSL_CERT_FILE", "SSL_CERT_DIR",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)  # fmt: skip

# What Ollama reads: its own settings (envconfig/config.go), the GPU runtimes' device
# selection and library path (discover/, llm/server.go), in ollama/ollama at commit
# fb30760996871fa9460115c753afd2c60d4ab0f7.
OLLAMA: Final = (
    "OLLAMA_*", "LD_LIBRARY_PATH",
    "CUDA_*", "NVIDIA_*", "HIP_*", "ROCR_*", "ROCM_*", "HSA_*", "GPU_DEVICE_ORDINAL",
    "GGML_*",
)  # fmt: skip

# What `ondemand serve` reads besides Ollama's (docs/serve.md, docs/proxy.md): its
# settings, its log settings, the usage webhook and the OVH seed's Basic auth.
SERVER: Final = (
    "ONDEMAND_*", "AUTHORIZATION_LOG_*", "USER_MODEL_METRICS_WEBHOOK_*", "OVHAI_BASIC_AUTH_*",
)  # fmt: skip

# Never handed to Ollama, whatever matches them: the server's keys and every credential of
# ours. OLLAMA_API_KEY is what `up` exports for clients, and Ollama would send it to
# ollama.com as its own.
_SECRETS: Final = re.compile(
    r"^(AUTHORIZATION_APIKEY.*|ONDEMAND_ADMIN_KEY|ONDEMAND_API_KEY|ONDEMAND_BASIC_AUTH"
    r"|ONDEMAND_KEYS_FILE|ONDEMAND_RUN_KEY_SECRET|ONDEMAND_GITHUB_TOKEN|ONDEMAND_SANDBOX_.*TOKEN"
    r"|OVHAI_BASIC_AUTH_.*|OVH_AI_TOKEN|RUNPOD_API_KEY|RUNPOD_CLIENT_KEY|GITHUB_TOKEN"
    r"|USER_MODEL_METRICS_WEBHOOK_API_KEY|OLLAMA_API_KEY|OLLAMA_.*_(KEY|TOKEN|SECRET))$"
)


def pass_env_names(env: Mapping[str, str]) -> tuple[str, ...]:
    """The names or globs of ``ONDEMAND_PASS_ENV``: comma-separated, blanks dropped."""
    return tuple(name.strip() for name in env.get(PASS_ENV, "").split(",") if name.strip())


def allowed(env: Mapping[str, str], patterns: Iterable[str]) -> dict[str, str]:
    """The variables of ``env`` whose name matches one of ``patterns`` (``fnmatch`` globs,
    case-sensitive)."""
    wanted = tuple(patterns)
    return {k: v for k, v in env.items() if any(fnmatchcase(k, p) for p in wanted)}


def is_secret(name: str) -> bool:
    return bool(_SECRETS.match(name))


def ollama_environment(env: Mapping[str, str]) -> dict[str, str]:
    """What Ollama gets of ``env`` (the server's): Ollama's variables and the system's,
    plus ``ONDEMAND_PASS_ENV``'s, and never a secret of ours."""
    chosen = allowed(env, (*SYSTEM, *OLLAMA, *pass_env_names(env)))
    return {k: v for k, v in chosen.items() if not is_secret(k)}
