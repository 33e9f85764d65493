"""What the placeholder lowerings (FP8 Q/DQ, NVFP4) look up in an exported graph: its nodes, initializers,
Constant outputs and how many consumers each value has (so a weight used only by the rewritten placeholder can
be dropped once its replacement is in)."""

from __future__ import annotations


class GraphIndex:
    def __init__(self, graph):
        self.nodes = list(graph.node)
        self.inits = {t.name: t for t in graph.initializer}
        # constants produced by Constant nodes count as initializers too
        self.consts = {n.output[0]: n for n in self.nodes if n.op_type == "Constant" and n.domain == ""}
        self.users: dict[str, int] = {}
        for n in self.nodes:
            for i in n.input:
                self.users[i] = self.users.get(i, 0) + 1
        for o in graph.output:  # a graph output is a consumer too: never drop it
            self.users[o.name] = self.users.get(o.name, 0) + 1

    def const_array(self, name: str):
        """The value of an initializer or Constant output as numpy, or None when ``name`` is computed."""
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        if name in self.consts:
            return numpy_helper.to_array(self.consts[name].attribute[0].t)
        return None

    def release(self, name: str, drop: set) -> None:
        """One consumer of ``name`` is gone; an initializer nobody reads any more goes into ``drop``."""
        self.users[name] -= 1
        if self.users[name] == 0 and name in self.inits:
            drop.add(name)
