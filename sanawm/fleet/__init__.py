"""``sanawm serve --ray``: live sessions over a fleet of engine replicas on Ray Serve.

Modules: ``router`` (the request router that keeps every message of a session on the replica holding its
state), ``store`` (migration snapshots in a directory every replica reaches), ``engine`` (the engine
deployment: one bundle per replica, up to K sessions), ``ingress`` (the WebSocket front, the protocol of
``sanawm serve``), ``relay`` (one client's session as seen by the ingress), ``app`` (builds and runs the
application), ``cli``. Importing this package imports nothing heavy; Ray loads with ``app``.
"""

DEFAULT_SNAPSHOT_EVERY = 4  # chunks between a session's migration snapshots
