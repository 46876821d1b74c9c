"""Safe YAML loading: ``yaml.SafeLoader`` with caps on what aliases may add.

:func:`compose_and_load` composes one document, refuses it before anything is constructed
when its aliases would copy too much (a "billion laughs" file) or refer back into themselves,
turns nesting too deep for PyYAML's recursive composer into a :class:`UserError`, and returns
the node graph (for line numbers) with the data. Other YAML errors are raised as
``yaml.YAMLError``, for the caller to word.
"""

from __future__ import annotations

from typing import Any

from waluigi.errors import UserError

# Limits on what YAML aliases may add to a suite (or to any file read here: a sweep spec).
# Aliases are allowed (the official files use them to share judge prompts and paraphrase
# lists between the plain, _json and _template variants of a question), but each alias is a
# copy once the suite is built, written out in full to every eval run's suite.json. A "billion laughs" file (anchors of aliases, each level
# x10) is 700 bytes and expands to 10**9 nodes, and one 1 MB string aliased 1000 times is a
# gigabyte of text, so what aliases add is counted on the composed node graph before anything
# is constructed.
#
# Measured (nodes and scalar characters with every alias expanded; what the aliases add):
#   official deception_factual.yaml      184 nodes,   6,102 chars (aliases add 108 nodes,  4,344 chars)
#   official deception_sit_aware.yaml    129 nodes,   4,469 chars (aliases add  42 nodes,  2,583 chars)
#   official first_plot_questions.yaml   449 nodes,  58,498 chars (aliases add 184 nodes, 50,159 chars)
#   official preregistered_evals.yaml    865 nodes, 112,195 chars (aliases add 329 nodes, 98,371 chars)
#   builtin  core.yaml                   475 nodes,  45,792 chars (aliases add 193 nodes, 35,394 chars)
# The limits are some 300x (nodes) and 100x (characters) above the largest of these: a
# generated suite of two thousand questions that alias shared judge prompts stays below them,
# while a billion-laughs file passes them within six levels and a 1 MB string after ten
# copies. Only the copies count: a long suite written out without aliases is never refused.
MAX_ALIAS_NODES = 100_000
MAX_ALIAS_CHARS = 10_000_000


def compose_and_load(text: str, source: str, *, what: str = "document", too_deep: str | None = None) -> tuple[Any, Any]:
    """``(node, data)`` of the single YAML document ``text``: its composed node graph (``None``
    for an empty document) and the data ``yaml.safe_load`` would give, built from that graph
    once the alias caps pass (at most :data:`MAX_ALIAS_NODES` nodes and
    :data:`MAX_ALIAS_CHARS` characters of alias copies, no alias inside its own anchor).

    ``source`` starts every error message and ``what`` names the document in them (``"suite"``:
    "a suite file cannot be recursive"); ``too_deep`` is added to the error for nesting too deep
    to compose (``"a suite is a list of flat question mappings"``). A malformed document raises
    ``yaml.YAMLError`` with its marks, for the caller to word."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_alias_expansion(node, source, what)  # on the node graph, before anything is built
        data = loader.construct_document(node) if node is not None else None
    except RecursionError:  # PyYAML composes and constructs recursively: "[[[[..." 1000 deep
        raise UserError(f"{source}: YAML nested too deeply" + (f"; {too_deep}" if too_deep else "")) from None
    finally:
        loader.dispose()
    return node, data


def alias_expansion(root) -> tuple[int, int, int, int]:
    """``(nodes, chars, distinct_nodes, distinct_chars)`` of a composed YAML node graph: the
    node count and scalar characters with every alias expanded, and the same over the distinct
    nodes, as written in the file. Each node is visited once (an alias is the anchored node
    object itself, so sizes are memoized by identity); nothing is constructed or copied.

    A node that contains an alias of itself (``&a [*a]``) raises :class:`ValueError` with
    the line of the node that refers back (1-based) as its argument."""
    import yaml

    sizes: dict[int, tuple[int, int]] = {}
    on_path: set[int] = set()  # the node being expanded and its ancestors: a reference back is a cycle
    distinct_chars = 0
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            if key not in sizes:
                sizes[key] = (1, len(node.value))
                distinct_chars += len(node.value)
            continue
        children = [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else node.value
        if children_done:
            on_path.discard(key)
            nodes, chars = 1, 0
            for child in children:
                child_nodes, child_chars = sizes[id(child)]
                nodes += child_nodes
                chars += child_chars
            sizes[key] = (nodes, chars)
            continue
        if key in sizes:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                raise ValueError(node.start_mark.line + 1)
            if id(child) not in sizes:
                stack.append((child, False))
    nodes, chars = sizes[id(root)]
    return nodes, chars, len(sizes), distinct_chars


def _check_alias_expansion(root, source: str, what: str = "document") -> None:
    """Refuse a document whose aliases would expand it past :data:`MAX_ALIAS_NODES` nodes or
    :data:`MAX_ALIAS_CHARS` characters of copies, or that refers to itself; ``what`` names
    the document in the messages (``"suite"``)."""
    try:
        nodes, chars, distinct_nodes, distinct_chars = alias_expansion(root)
    except ValueError as cycle:
        raise UserError(
            f"{source}:{cycle.args[0]}: a YAML alias here refers to a node that contains it, so the {what} "
            f"would be infinitely deep; a {what} file cannot be recursive: refer to a different anchor"
        ) from None
    if nodes - distinct_nodes > MAX_ALIAS_NODES:
        raise UserError(
            f"{source}: YAML aliases expand to {nodes:,} nodes ({nodes - distinct_nodes:,} of them alias copies, "
            f"more than the limit of {MAX_ALIAS_NODES:,}); a {what} file should not need this many alias "
            "expansions: write the shared parts out, or split the file"
        )
    if chars - distinct_chars > MAX_ALIAS_CHARS:
        raise UserError(
            f"{source}: YAML aliases expand to {chars:,} characters of text ({chars - distinct_chars:,} of them "
            f"alias copies, more than the limit of {MAX_ALIAS_CHARS:,}); a {what} file should not need this many "
            "alias expansions: alias shorter texts, or split the file"
        )
