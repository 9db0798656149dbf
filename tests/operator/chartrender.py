"""Render the Helm chart's templates without helm: a small interpreter of the Go template
language (text/template: actions, trim markers, if/else, range, with, define/include,
variables, pipelines) with the Sprig functions the chart calls. Enough to read the objects
a values file produces; a template using anything else fails loudly here, not silently."""

import copy
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ACTION = re.compile(r"\{\{(- )?(.*?)( -)?\}\}", re.S)
TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\(|\)|\||:=|,|\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*'
                   r'|(?:\.[A-Za-z0-9_]+)+|\.|-?\d+|[A-Za-z_][A-Za-z0-9_]*')
BLOCKS = ("if", "range", "with", "define")


@dataclass
class Node:
    kind: str                      # text, action, if, range, with, define
    text: str = ""                 # the text, or the action's pipeline
    body: list["Node"] = field(default_factory=list)
    orelse: list["Node"] = field(default_factory=list)


def _lex(source: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", pipeline) pieces, with `{{-` and `-}}` trimming applied."""
    pieces: list[tuple[str, str]] = []
    position, trim_next = 0, False
    for match in ACTION.finditer(source):
        text = source[position:match.start()]
        text = text.lstrip() if trim_next else text
        text = text.rstrip() if match.group(1) else text
        pieces.append(("text", text))
        body = match.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            pieces.append(("action", body))
        position, trim_next = match.end(), bool(match.group(3))
    tail = source[position:]
    pieces.append(("text", tail.lstrip() if trim_next else tail))
    return pieces


def _parse(pieces: list[tuple[str, str]], start: int = 0, block: bool = False) -> tuple[list[Node], list[Node], int]:
    """Nodes up to the matching {{ end }} (body, else-branch, index after it)."""
    nodes: list[Node] = []
    body: list[Node] | None = None
    i = start
    while i < len(pieces):
        kind, text = pieces[i]
        word = text.split(" ", 1)[0] if kind == "action" else ""
        if kind == "text":
            nodes.append(Node("text", text))
        elif word == "end":
            assert block, "{{ end }} without a block"
            return (body, nodes, i + 1) if body is not None else (nodes, [], i + 1)
        elif word == "else":
            assert block and body is None and text == "else", f"unsupported: {{{{ {text} }}}}"
            body, nodes = nodes, []
        elif word in BLOCKS:
            inner, orelse, i = _parse(pieces, i + 1, block=True)
            nodes.append(Node(word, text[len(word):].strip(), inner, orelse))
            continue
        else:
            nodes.append(Node("action", text))
        i += 1
    assert not block, "a block has no {{ end }}"
    return nodes, [], i


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "") and not (isinstance(value, (list, dict)) and not value)


def _print(value: Any) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(_print(v) for v in value) + "]"
    return str(value)


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def _indent(n: int, text: str) -> str:
    return "\n".join(" " * n + line for line in text.split("\n"))


def _printf(fmt: str, *args: Any) -> str:
    return re.sub(r"%[sdv]", "{}", fmt).format(*(_print(a) for a in args))


SPRIG: dict[str, Callable[..., Any]] = {
    "nindent": lambda n, s: "\n" + _indent(n, s),
    "indent": _indent,
    "toYaml": _to_yaml,
    "default": lambda d, v=None: v if _truthy(v) else d,
    "list": lambda *items: list(items),
    "join": lambda sep, items: sep.join(_print(i) for i in items),
    "splitList": lambda sep, s: s.split(sep),
    "quote": lambda s: '"' + _print(s).replace('"', '\\"') + '"',
    "printf": _printf,
    "trunc": lambda n, s: s[:n],
    "trimSuffix": lambda suffix, s: s[: -len(suffix)] if suffix and s.endswith(suffix) else s,
    "contains": lambda sub, s: sub in s,
    "not": lambda v: not _truthy(v),
}


class Files:
    """The chart's `.Files`: Glob (path -> content) and Get, relative to the chart folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def Glob(self, pattern: str) -> dict[str, str]:  # Helm's name
        paths = (p for p in sorted(self.root.rglob("*")) if p.is_file())
        return {str(p.relative_to(self.root)): p.read_text() for p in paths
                if fnmatch.fnmatch(str(p.relative_to(self.root)), pattern)}

    def Get(self, path: str) -> str:  # Helm's name
        return (self.root / path).read_text()


class Renderer:
    def __init__(self, chart: Path, values: dict[str, Any], namespace: str, release: str = "helix-operator") -> None:
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        self.root = {"Values": values, "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
                     "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"]},
                     "Files": Files(chart)}
        self.templates = {p.name: _parse(_lex(p.read_text()))[0] for p in sorted((chart / "templates").glob("*"))}
        self.defines = {_unquote(n.text): n.body for nodes in self.templates.values() for n in nodes
                        if n.kind == "define"}

    def render(self, name: str) -> str:
        return self._run(self.templates[name], self.root, {"$": self.root})

    def documents(self, name: str) -> list[dict[str, Any]]:
        return [doc for doc in yaml.safe_load_all(self.render(name)) if doc]

    def _run(self, nodes: list[Node], dot: Any, variables: dict[str, Any]) -> str:
        out: list[str] = []
        scope = dict(variables)
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "action":
                value = self._pipeline(node.text, dot, scope)
                if not re.match(r"\$[A-Za-z0-9_]* :=", node.text):
                    out.append(_print(value))
            elif node.kind == "if":
                branch = node.body if _truthy(self._pipeline(node.text, dot, scope)) else node.orelse
                out.append(self._run(branch, dot, scope))
            elif node.kind == "with":
                value = self._pipeline(node.text, dot, scope)
                out.append(self._run(node.body, value, scope) if _truthy(value) else self._run(node.orelse, dot, scope))
            elif node.kind == "range":
                out.append(self._range(node, dot, scope))
        return "".join(out)

    def _range(self, node: Node, dot: Any, scope: dict[str, Any]) -> str:
        names, _, pipeline = node.text.rpartition(":=")
        declared = [n.strip() for n in names.split(",") if n.strip()]
        items = self._pipeline(pipeline.strip(), dot, scope)
        pairs = sorted(items.items()) if isinstance(items, dict) else list(enumerate(items or []))
        if not pairs:
            return self._run(node.orelse, dot, scope)
        out = []
        for key, value in pairs:
            inner = dict(scope)
            if len(declared) == 2:
                inner[declared[0]], inner[declared[1]] = key, value
            elif declared:
                inner[declared[0]] = value
            out.append(self._run(node.body, value, inner))
        return "".join(out)

    def _pipeline(self, text: str, dot: Any, scope: dict[str, Any]) -> Any:
        tokens = _tokens(text)
        if len(tokens) > 2 and tokens[1] == ":=":
            scope[tokens[0]] = value = self._commands(tokens[2:], dot, scope)
            return value
        return self._commands(tokens, dot, scope)

    def _commands(self, tokens: list[str], dot: Any, scope: dict[str, Any]) -> Any:
        commands, depth, current = [], 0, []
        for token in tokens:
            depth += (token == "(") - (token == ")")
            if token == "|" and depth == 0:
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
        value, piped = None, False
        for command in commands:
            value, piped = self._command(command, dot, scope, [value] if piped else []), True
        return value

    def _command(self, tokens: list[str], dot: Any, scope: dict[str, Any], piped: list[Any]) -> Any:
        operands, i = [], 0
        while i < len(tokens):
            if tokens[i] == "(":
                depth, j = 1, i + 1
                while depth:
                    depth += (tokens[j] == "(") - (tokens[j] == ")")
                    j += 1
                operands.append(("value", self._commands(tokens[i + 1:j - 1], dot, scope)))
                i = j
            else:
                operands.append(("token", tokens[i]))
                i += 1
        head_kind, head = operands[0]
        args = [self._operand(o, dot, scope) for o in operands[1:]] + piped
        if head_kind == "token" and head == "include":
            return self._run(self.defines[args[0]], args[1], {"$": args[1]})
        if head_kind == "token" and head in SPRIG:
            return SPRIG[head](*args)
        value = self._operand(operands[0], dot, scope)
        return value(*args) if callable(value) else value

    def _operand(self, operand: tuple[str, Any], dot: Any, scope: dict[str, Any]) -> Any:
        kind, token = operand
        if kind == "value":
            return token
        if token.startswith('"'):
            return _unquote(token)
        if re.fullmatch(r"-?\d+", token):
            return int(token)
        if token in ("true", "false"):
            return token == "true"
        if token.startswith("$"):
            name, _, path = token.partition(".")
            return _walk(scope[name], path)
        if token.startswith("."):
            return _walk(dot, token[1:])
        raise AssertionError(f"unknown function {token!r}")


def _tokens(text: str) -> list[str]:
    tokens, position = [], 0
    for match in TOKEN.finditer(text):
        assert not text[position:match.start()].strip(), f"cannot read {{{{ {text} }}}}"
        tokens.append(match.group())
        position = match.end()
    assert not text[position:].strip(), f"cannot read {{{{ {text} }}}}"
    return tokens


def _walk(value: Any, path: str) -> Any:
    for key in filter(None, path.split(".")):
        value = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
    return value


def _unquote(token: str) -> str:
    return token[1:-1].replace('\\"', '"').replace("\\\\", "\\")


def values_with(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """values.yaml with `overrides` merged in, as `helm install --set` would."""
    merged = copy.deepcopy(defaults)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = values_with(merged[key], value)
        else:
            merged[key] = value
    return merged
