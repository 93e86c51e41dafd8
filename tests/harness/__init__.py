"""What the tests share: harnesses that start real servers for the backend tests
(``etcd``, ``consul``, ``dockerd``, with ``common``) and ``cli``, which runs the installed
``sked`` console script.

The plugin packages' own tests (``plugins/*/tests``) import them as ``tests.harness.…``
from the repository's root."""
