"""Offline stand-ins for the services ondemand talks to, for rehearsals, demos and tests."""
