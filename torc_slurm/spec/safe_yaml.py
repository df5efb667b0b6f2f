"""A bounded YAML reader for specs: libyaml's event parser, composed here without recursion.

libyaml's own composer recurses in C and crashes the process (SIGSEGV) on a document nested some
20,000 levels deep, and PyYAML expands nothing but also bounds nothing. This composer builds the
same node tree from libyaml's events with an explicit stack and refuses, with the line, what a spec
never needs (limits in ``spec.limits``):

- a key written twice in one mapping (names both lines);
- nesting deeper than ``MAX_NESTING``, counting what aliases bring in;
- more than ``MAX_VALUES`` values in all, counting each alias as the values it stands for ("billion
  laughs" are refused before anything is expanded); aliases to a node still being built (recursion);
- integers longer than ``MAX_INTEGER_DIGITS`` digits; tags other than the plain types.

Implicit types follow YAML 1.1 as PyYAML does, except that timestamps stay strings and base-60
numbers are not numbers: ``i: 1:30`` is the range "1:30", as in torc (YAML 1.2), not 90.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from torc_slurm.spec.limits import MAX_INTEGER_DIGITS, MAX_NESTING, MAX_VALUES, short_repr

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_MERGE = "tag:yaml.org,2002:merge"
_TYPED = {_INT, _FLOAT, "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"}  # '!!int abc' is refused
_ALLOWED_TAGS = {_STR, _INT, _FLOAT, _MERGE, "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null",
                 "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"}
_SEXAGESIMAL = ":"  # PyYAML's int and float patterns accept '190:20:30'; ours do not
_MAX_PATH = 6  # parts of a location shown in an error


class LimitError(Exception):
    """A document this reader refuses. ``loc`` is the path to the offending value, as pydantic
    gives it (keys and list indices); ``names`` maps a path prefix to that entry's ``name``."""

    def __init__(self, message: str, line: int | None, loc: tuple[Any, ...], names: dict[tuple[Any, ...], str]):
        super().__init__(message)
        self.message, self.line, self.loc, self.names = message, line, loc, names


class _SpecResolver(Resolver):
    pass


# Copy PyYAML's implicit resolvers minus timestamps and base-60 numbers.
_SpecResolver.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in Resolver.yaml_implicit_resolvers.items()
}


class _SpecConstructor(SafeConstructor):
    pass


try:  # libyaml, ~20x faster than the pure-Python parser
    from yaml.cyaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _Parser = None
if _Parser is not None:
    class _Loader(_Parser, _SpecConstructor, _SpecResolver):  # type: ignore[misc, valid-type]
        def __init__(self, text: str) -> None:
            _Parser.__init__(self, text)
            _SpecConstructor.__init__(self)
            _SpecResolver.__init__(self)
else:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Loader(Reader, Scanner, Parser, _SpecConstructor, _SpecResolver):  # type: ignore[no-redef]
        def __init__(self, text: str) -> None:
            Reader.__init__(self, text)
            Scanner.__init__(self)
            Parser.__init__(self)
            _SpecConstructor.__init__(self)
            _SpecResolver.__init__(self)


@dataclass(slots=True)
class _Open:
    """A sequence or mapping being composed."""

    node: Node
    anchor: str | None
    size: int = 1     # values it holds once aliases are expanded, itself included
    height: int = 1   # nesting levels, itself included, aliases expanded
    key: Node | None = None                       # a mapping's key waiting for its value
    keys: dict[Any, int] | None = None            # a mapping's keys -> the line each was written on


def load(text: str) -> tuple[Node | None, Any]:
    """Parse one YAML document: its node tree (for line numbers) and the data built from it.

    Raises ``yaml.YAMLError`` for syntax errors and ``LimitError`` for what this reader refuses."""
    loader = _Loader(text)
    try:
        root = _compose(loader)
        return root, (loader.construct_document(root) if root is not None else None)
    finally:
        loader.dispose()


def compose(text: str) -> Node | None:
    """Only the node tree (line numbers for a spec read another way, e.g. JSON)."""
    loader = _Loader(text)
    try:
        return _compose(loader)
    finally:
        loader.dispose()


def _compose(loader: Any) -> Node | None:
    loader.get_event()  # StreamStart
    if loader.check_event(yaml.StreamEndEvent):
        loader.get_event()
        return None
    document = loader.get_event()  # DocumentStart
    root = _Composer(loader).compose()
    loader.get_event()  # DocumentEnd
    if not loader.check_event(yaml.StreamEndEvent):
        event = loader.get_event()
        raise yaml.composer.ComposerError("expected a single document in the stream", document.start_mark,
                                          "but found another document", event.start_mark)
    loader.get_event()
    return root


class _Composer:
    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.anchors: dict[str, Node] = {}
        self.sizes: dict[str, tuple[int, int]] = {}  # a finished anchored node: (size, height)
        self.values = 0  # values composed so far, aliases expanded
        self.stack: list[_Open] = []

    def compose(self) -> Node:
        loader, stack = self.loader, self.stack
        get_event = loader.get_event
        while True:
            event = get_event()
            kind = type(event)
            if kind is yaml.ScalarEvent:
                node, size, height = self._scalar(event), 1, 0
            elif kind is yaml.SequenceStartEvent or kind is yaml.MappingStartEvent:
                self._open(event, kind is yaml.MappingStartEvent)
                continue
            elif kind is yaml.SequenceEndEvent or kind is yaml.MappingEndEvent:
                done = stack.pop()
                node, size, height = done.node, done.size, done.height
                node.end_mark = event.end_mark
                if done.anchor is not None:
                    self.sizes[done.anchor] = (size, height)
            elif kind is yaml.AliasEvent:
                node, size, height = self._alias(event)
            else:  # pragma: no cover - libyaml never sends anything else inside a document
                raise yaml.composer.ComposerError(None, None, f"unexpected {event}", event.start_mark)
            if not stack:
                return node
            self._add(stack[-1], node, size, height)

    # -- one event each ------------------------------------------------------------------------
    def _scalar(self, event: Any) -> ScalarNode:
        tag = event.tag
        explicit = not (tag is None or tag == "!")
        if not explicit:
            tag = self.loader.resolve(ScalarNode, event.value, event.implicit)
            if tag in (_INT, _FLOAT) and _SEXAGESIMAL in event.value:
                tag = _STR
        node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
        self._count(node)
        self._check_tag(node)
        if explicit and tag in _TYPED and self.loader.resolve(ScalarNode, event.value, (True, False)) != tag:
            self._fail(f"{short_repr(event.value)} is not a valid {tag.replace('tag:yaml.org,2002:', '!!')}", node)
        if tag == _INT and len(event.value) > MAX_INTEGER_DIGITS:
            self._fail(f"an integer of {len(event.value):,} digits is too long (at most {MAX_INTEGER_DIGITS:,})",
                       node)
        if event.anchor is not None:
            self.anchors[event.anchor] = node
            self.sizes[event.anchor] = (1, 0)
        return node

    def _open(self, event: Any, mapping: bool) -> None:
        tag = event.tag
        node_class = MappingNode if mapping else SequenceNode
        if tag is None or tag == "!":
            tag = self.loader.resolve(node_class, None, event.implicit)
        node = node_class(tag, [], event.start_mark, None, flow_style=event.flow_style)
        self._count(node)
        self._check_tag(node)
        if len(self.stack) >= MAX_NESTING:
            self._fail(f"the spec is nested more than {MAX_NESTING} levels deep", node)
        if event.anchor is not None:
            self.anchors[event.anchor] = node  # sizes[] only once it is finished: see _alias
            self.sizes.pop(event.anchor, None)
        self.stack.append(_Open(node, event.anchor, keys={} if mapping else None))

    def _alias(self, event: Any) -> tuple[Node, int, int]:
        anchor = event.anchor
        node = self.anchors.get(anchor)
        if node is None:
            raise yaml.composer.ComposerError(None, None, f"found undefined alias {anchor!r}", event.start_mark)
        if anchor not in self.sizes:
            self._fail(f"alias *{anchor} refers to a value that contains it (a recursive structure)", node,
                       mark=event.start_mark)
        size, height = self.sizes[anchor]
        self.values += size
        if self.values > MAX_VALUES:
            self._fail(f"aliases expand the spec to more than {MAX_VALUES:,} values (last: *{anchor})", node,
                       mark=event.start_mark)
        return node, size, height

    def _add(self, parent: _Open, node: Node, size: int, height: int) -> None:
        parent.size += size
        if height + 1 > parent.height:
            parent.height = height + 1
            if parent.height + len(self.stack) - 1 > MAX_NESTING:
                self._fail(f"the spec is nested more than {MAX_NESTING} levels deep (aliases expanded)", node)
        if parent.keys is None:
            parent.node.value.append(node)
        elif parent.key is None:
            parent.key = node
            self._check_key(parent, node)
        else:
            parent.node.value.append((parent.key, node))
            parent.key = None

    # -- checks --------------------------------------------------------------------------------
    def _count(self, node: Node) -> None:
        self.values += 1
        if self.values > MAX_VALUES:
            self._fail(f"the spec holds more than {MAX_VALUES:,} values", node)

    def _check_key(self, parent: _Open, key: Node) -> None:
        if not isinstance(key, ScalarNode) or key.tag == _MERGE:
            return  # a list or mapping as a key is refused when built ("unhashable key")
        identity: Any = key.value if key.tag == _STR else ("value", self.loader.construct_object(key))
        line = key.start_mark.line + 1
        assert parent.keys is not None
        first = parent.keys.get(identity)
        if first is not None:
            self._fail(f"duplicate key {short_repr(key.value)} (first at line {first}, again at line {line})", key)
        parent.keys[identity] = line

    def _check_tag(self, node: Node) -> None:
        if node.tag not in _ALLOWED_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self._fail(f"YAML tag {tag!r} is not allowed in a spec (plain strings, numbers, booleans, null, "
                       "lists and mappings only)", node)

    def _fail(self, message: str, node: Node, mark: Any = None) -> None:
        mark = mark or node.start_mark
        loc, names = self._where()
        if len(loc) > _MAX_PATH:  # 'metadata.0.0.0.0…' a hundred times says nothing more
            loc = (*loc[:_MAX_PATH], "…")
        raise LimitError(message, mark.line + 1, loc, names)

    def _where(self) -> tuple[tuple[Any, ...], dict[tuple[Any, ...], str]]:
        """The path to the value being composed, and the ``name`` of each mapping along it."""
        loc: list[Any] = []
        names: dict[tuple[Any, ...], str] = {}
        for frame in self.stack:
            if frame.keys is not None:
                name = next((v.value for k, v in frame.node.value
                             if isinstance(k, ScalarNode) and k.value == "name" and isinstance(v, ScalarNode)), None)
                if name is not None:
                    names[tuple(loc)] = name
                if frame.key is not None:
                    loc.append(frame.key.value if isinstance(frame.key, ScalarNode) else "?")
            else:
                loc.append(len(frame.node.value))
        return tuple(loc), names

