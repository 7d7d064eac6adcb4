"""Offline stand-ins for the services ondemand talks to, for rehearsals, demos and tests.

- ``ollama``: the Ollama API emulator (and an ``ollama`` stand-in executable);
- ``ovh``: OVHcloud AI Deploy's AI API, whose apps run as real ``ondemand serve``;
- ``runpod``: RunPod's REST v2 API (endpoints, pods, network volumes), the
  load-balancing gateway and the pod proxy, whose workers and pods run as real servers;
- ``apps``: the app runner any cloud emulator uses to run its apps;
- ``faults``: injected failures (HTTP errors, slow transitions, no capacity, …);
- ``server``: the sandbox, every emulator behind one loopback server (``ondemand sandbox``).
"""
