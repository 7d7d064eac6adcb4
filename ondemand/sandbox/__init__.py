"""Offline stand-ins for the services ondemand talks to, for rehearsals, demos and tests.

- ``ollama``: the Ollama API emulator (and an ``ollama`` stand-in executable);
- ``ovh``: OVHcloud AI Deploy's AI API, whose apps run as real ``ondemand serve``;
- ``apps``: the app runner any cloud emulator uses to run its apps;
- ``faults``: injected failures (HTTP errors, slow transitions, no capacity, …);
- ``server``: the sandbox, every emulator behind one loopback server (``ondemand sandbox``).
"""
