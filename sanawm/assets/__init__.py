"""Package data: the trained toy world model (``tiny_world/``), see ``sanawm.worlds``."""
