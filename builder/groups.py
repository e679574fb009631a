"""Groups of nodes from their module paths (a node's optional "module" field). Pure.

An imported model's nodes carry the module they came from: "layer1.0.conv1" for a module's own
call, "layer1.0" for the `out += identity` in that module's forward. A group is a path that
another path sits strictly under ("layer1" and "layer1.0", never the leaf "layer1.0.conv1"): so
a ReLU module called three times stays three nodes, not a group of its own, and the add in
layer1.0's forward belongs to the group layer1.0. The canvas draws the groups as nested boxes
and builder/layout.py lays each one out as a unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from builder.graph import Graph

ROOT = ""  # the whole graph, parent of the top-level groups and nodes


@dataclass(frozen=True)
class GroupTree:
    """Each group's parent and direct children; `of_node` is the group a node sits in (ROOT for
    one outside every group), `members` every node under a group, however deep."""

    parent: dict[str, str] = field(default_factory=dict)
    child_groups: dict[str, list[str]] = field(default_factory=dict)
    child_nodes: dict[str, list[str]] = field(default_factory=dict)
    of_node: dict[str, str] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)

    @property
    def groups(self) -> list[str]:
        return [group for group in self.child_groups if group != ROOT]

    def ancestors(self, node_id: str) -> list[str]:
        """The groups a node sits in, innermost first."""
        chain = []
        group = self.of_node.get(node_id, ROOT)
        while group != ROOT:
            chain.append(group)
            group = self.parent[group]
        return chain


def prefixes(path: str) -> list[str]:
    """'layer1.0.conv1' -> ['layer1', 'layer1.0', 'layer1.0.conv1']."""
    parts = path.split(".")
    return [".".join(parts[: index + 1]) for index in range(len(parts))]


def group_tree(graph: Graph) -> GroupTree:
    """The groups of a graph's module paths; a graph without any has only ROOT."""
    modules = {node.id: node.module for node in graph.nodes if node.module}
    groups = {prefix for path in modules.values() for prefix in prefixes(path)[:-1]}
    tree = GroupTree()
    tree.child_groups[ROOT], tree.child_nodes[ROOT], tree.members[ROOT] = [], [], []
    for group in sorted(groups, key=lambda g: (g.count("."), g)):  # parents before children
        owner = next((p for p in reversed(prefixes(group)[:-1]) if p in groups), ROOT)
        tree.parent[group] = owner
        tree.child_groups[owner].append(group)
        tree.child_groups[group], tree.child_nodes[group], tree.members[group] = [], [], []
    for node in graph.nodes:
        path = modules.get(node.id)
        owner = next((p for p in reversed(prefixes(path)) if p in groups), ROOT) if path else ROOT
        tree.of_node[node.id] = owner
        tree.child_nodes[owner].append(node.id)
        while True:
            tree.members[owner].append(node.id)
            if owner == ROOT:
                break
            owner = tree.parent[owner]
    order = {node.id: index for index, node in enumerate(graph.nodes)}
    for group, children in tree.child_groups.items():  # in the order the data reaches them
        children.sort(key=lambda g: min(order[n] for n in tree.members[g]))
    return tree
