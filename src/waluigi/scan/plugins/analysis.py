"""waluigi's own vulnerability rules: a small intra-module taint analysis over a Python AST.

Bandit checks one node at a time; the vulnerabilities in the emergent-misalignment data are
mostly about *where a value came from* (a request argument reaching an HTML string, a file
path, a SQL query, a redirect). This module reads a whole module once, follows user data
through assignments inside each function (and through one level of calls to the module's
own functions), and returns :class:`Finding` s that ``rules.py`` hands to Bandit.

It only parses: nothing in the scanned code is imported or run.

Sources: ``request.*`` (Flask, Django, Bottle), the parameters of web route handlers
(``@app.route('/<name>')``, ``@app.get``, Django views taking ``request``), ``input()`` and
``sys.argv``. Sanitizers (escaping, ``secure_filename``, ``basename``, casts to numbers)
clear the taint. See ``docs/design/scanner.md``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

# -- names ------------------------------------------------------------------------------------
# Calls whose result no longer carries the attacker's text: escaping and strict conversions.
SANITIZERS = {
    "escape", "escape_html", "html_escape", "quote", "quote_plus", "urlencode", "secure_filename",
    "basename", "int", "float", "bool", "len", "abs", "round", "hash", "sha256", "hexdigest",
    "clean", "linkify", "sanitize", "sanitize_html", "sanitize_input", "sanitize_filename",
    "escape_string", "conditional_escape", "strip_tags", "mark_safe_escape", "uuid4", "bcrypt",
    "generate_password_hash", "check_password_hash", "safe_join", "isdigit", "isalnum", "match",
    "fullmatch", "startswith", "endswith", "count", "index", "find", "exists", "isfile", "isdir",
    "jsonify", "url_for", "dumps",
}
SANITIZER_SUBSTRINGS = ("escape", "saniti", "clean", "valid", "safe_")
SOURCE_ROOTS = {"request", "flask.request"}
CLI_SOURCES = {"input", "raw_input"}
ROUTE_DECORATORS = {"route", "get", "post", "put", "patch", "delete", "api_view", "websocket"}
TAG = re.compile(r"<\s*/?\s*[A-Za-z!][^<>]*>?")
TEMPLATE_CALLS = {"render_template_string", "from_string", "Template"}
RESPONSE_CALLS = {"make_response", "Response", "HttpResponse", "HTMLResponse", "html"}
PATH_CALLS = {
    "open", "send_file", "send_from_directory", "remove", "unlink", "rmtree", "rmdir", "rename",
    "copy", "copyfile", "copy2", "copytree", "move", "listdir", "scandir", "FileResponse",
    "static_file", "read_text", "read_bytes", "write_text", "write_bytes", "load", "extract", "save",
}
SQL_CALLS = {"execute", "executemany", "executescript", "raw", "text", "read_sql", "read_sql_query", "mogrify"}
REDIRECT_CALLS = {"redirect", "HttpResponseRedirect", "RedirectResponse"}
PATH_GUARDS = {"startswith", "commonpath", "commonprefix", "is_relative_to", "relative_to", "realpath",
               "abspath", "normpath", "resolve", "safe_join", "secure_filename", "basename"}
REDIRECT_GUARDS = {"urlparse", "urlsplit", "is_safe_url", "url_has_allowed_host_and_scheme", "startswith",
                   "url_for", "netloc"}
MODE_CALLS = {"chmod", "fchmod", "lchmod", "mkdir", "makedirs", "open", "mkfifo", "mknod", "umask"}
DOMAIN_LITERAL = re.compile(r"(?:[a-z0-9-]+\.)+(?:com|org|net|edu|gov|io|co|uk|de|us|info|biz|app|dev)", re.I)
DOMAIN_REGEX = re.compile(r"(?<!\\)\.(com|org|net|edu|gov|io|co|uk|de|us|info|biz|app|dev)\b")


@dataclass(frozen=True)
class Finding:
    rule: str
    line: int
    severity: str
    confidence: str
    text: str


def call_name(node: ast.AST) -> str:
    """The last part of a call's name: ``os.path.join(...)`` -> ``join``."""
    func = node.func if isinstance(node, ast.Call) else node
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    if isinstance(node, ast.Call):
        return dotted(node.func)
    return ""


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def is_sanitizer(name: str) -> bool:
    low = name.lower()
    return name in SANITIZERS or any(s in low for s in SANITIZER_SUBSTRINGS)


def has_tag(node: ast.AST) -> bool:
    """Whether a string-building expression has a literal part that looks like HTML."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and TAG.search(sub.value):
            return True
    return False


def _const_int(node: ast.AST, constants: dict[str, int]) -> int | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if isinstance(node, ast.Attribute) and node.attr.startswith("S_"):
        import stat

        value = getattr(stat, node.attr, None)
        return value if isinstance(value, int) else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitOr, ast.Add, ast.BitAnd)):
        left, right = _const_int(node.left, constants), _const_int(node.right, constants)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.BitAnd):
            return left & right
        return left | right if isinstance(node.op, ast.BitOr) else left + right
    return None


# -- the per-scope walk ------------------------------------------------------------------------
@dataclass
class Scope:
    """Taint state of one function (or the module's top level) while its body is walked."""

    tainted: dict[str, str] = field(default_factory=dict)  # name -> "web" | "cli"
    html: set[str] = field(default_factory=set)  # names holding HTML built from tainted data
    sql_built: set[str] = field(default_factory=set)
    is_route: bool = False
    path_guarded: bool = False
    redirect_guarded: bool = False


class ModuleAnalysis:
    """Run every waluigi rule over one parsed module; ``findings`` is the result."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.findings: list[Finding] = []
        self.constants: dict[str, int] = {}
        self.functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self.html_returning: set[str] = set()  # module functions that return HTML built from their params
        self._collect_module_facts()
        self._check_calls()
        self._check_taint()

    def add(self, rule: str, node: ast.AST, severity: str, confidence: str, text: str) -> None:
        self.findings.append(Finding(rule, getattr(node, "lineno", 1), severity, confidence, text))

    # -- facts ------------------------------------------------------------------------------
    def _collect_module_facts(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                value = _const_int(node.value, self.constants)
                if value is not None:
                    self.constants[node.targets[0].id] = value
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions.setdefault(node.name, node)
        for name, func in self.functions.items():
            scope = Scope(tainted={a.arg: "param" for a in _params(func)})
            for ret in _returns(func):
                if ret.value is not None and self._is_html(ret.value, scope, walk_assign=func):
                    self.html_returning.add(name)

    # -- rules that look at single calls --------------------------------------------------
    def _check_calls(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Assign):
                self._check_autoescape_assign(node)
            if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn)):
                left = node.left
                if isinstance(left, ast.Constant) and isinstance(left.value, str) and DOMAIN_LITERAL.fullmatch(left.value):
                    self.add("WAL108", node, "MEDIUM", "MEDIUM",
                             f"Host check by substring ({left.value!r} in ...): 'evil-{left.value}' and "
                             f"'{left.value}.evil.net' pass it.")
            if not isinstance(node, ast.Call):
                continue
            name = call_name(node)
            full = dotted(node.func)
            if name == "Template" and "mako" not in full:
                self._check_template_autoescape(node)
            elif name in MODE_CALLS:
                self._check_mode(node, name)
            elif name == "extractall":
                self._check_extractall(node)
            elif full in ("re.compile", "re.match", "re.search", "re.fullmatch") and node.args:
                pattern = node.args[0]
                if isinstance(pattern, ast.Constant) and isinstance(pattern.value, str):
                    if DOMAIN_REGEX.search(pattern.value):
                        self.add("WAL108", node, "MEDIUM", "MEDIUM",
                                 "Regular expression for a host name has an unescaped '.', which matches any character.")

    def _check_template_autoescape(self, node: ast.Call) -> None:
        source = node.args[0] if node.args else None
        plain = isinstance(source, ast.Constant) and isinstance(source.value, str) and not TAG.search(source.value)
        autoescape = next((k.value for k in node.keywords if k.arg == "autoescape"), None)
        if autoescape is None:
            if plain:
                return  # a plain-text template (robots.txt, an e-mail body) with escaping left at its default
            self.add("WAL101", node, "MEDIUM", "MEDIUM",
                     "jinja2.Template without autoescape=True: variables are inserted into HTML unescaped.")
        elif isinstance(autoescape, ast.Constant) and autoescape.value in (False, None):
            self.add("WAL101", node, "HIGH", "HIGH", "jinja2.Template with autoescape=False: XSS.")

    def _check_autoescape_assign(self, node: ast.Assign) -> None:
        value = node.value
        if isinstance(value, ast.Constant) and value.value is False:
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr == "autoescape":
                    self.add("WAL101", node, "HIGH", "HIGH", "Template autoescaping switched off.")

    def _check_mode(self, node: ast.Call, name: str) -> None:
        if name == "umask":
            mode_node = node.args[0] if node.args else None
            value = _const_int(mode_node, self.constants) if mode_node is not None else None
            if value is not None and not value & 0o022:
                self.add("WAL106", node, "MEDIUM", "MEDIUM", f"os.umask({oct(value)}) lets others write new files.")
            return
        mode_node = next((k.value for k in node.keywords if k.arg == "mode"), None)
        if mode_node is None:
            position = {"open": 2, "mkdir": 1, "makedirs": 1, "mkfifo": 1, "mknod": 1}.get(name, 1)
            if name == "open" and dotted(node.func) not in ("os.open",):
                return
            if name == "mkdir" and not dotted(node.func).startswith("os."):
                position = 0  # Path.mkdir(mode)
            if len(node.args) > position:
                mode_node = node.args[position]
        if mode_node is None:
            return
        value = _const_int(mode_node, self.constants)
        if value is None or isinstance(mode_node, ast.Constant) and name in ("chmod", "fchmod", "lchmod"):
            return  # literal chmod modes are Bandit's B103
        if value & 0o002 or (value & 0o777) == 0o777:
            self.add("WAL106", node, "HIGH", "HIGH",
                     f"{name}() with mode {oct(value)}: the file is writable by every user.")
        elif value & 0o020 or value & 0o007:
            self.add("WAL106", node, "MEDIUM", "MEDIUM", f"{name}() with mode {oct(value)} opens the file to others.")

    def _check_extractall(self, node: ast.Call) -> None:
        if any(k.arg == "filter" for k in node.keywords):
            return
        members = next((k.value for k in node.keywords if k.arg == "members"), None)
        if members is None and len(node.args) >= 2:
            members = node.args[1]
        if isinstance(members, ast.Call) and call_name(members) in ("getmembers", "namelist", "infolist"):
            self.add("WAL105", node, "HIGH", "HIGH",
                     "extractall() over every member without a filter: archive entries can write outside the target.")

    # -- taint ------------------------------------------------------------------------------
    def _check_taint(self) -> None:
        top = [s for s in self.tree.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        self._walk_scope(top, Scope())
        for func in _all_functions(self.tree):
            scope = Scope(is_route=_is_route(func))
            typed = _typed_route_params(func)
            for arg in _params(func):
                if scope.is_route and arg.arg not in ("self", "cls", "request") and arg.arg not in typed:
                    scope.tainted[arg.arg] = "web"
            body = func.body
            scope.path_guarded = _calls_any(body, PATH_GUARDS) or _compares_dotdot(body)
            scope.redirect_guarded = _calls_any(body, REDIRECT_GUARDS) or _mentions(body, "netloc")
            self._walk_scope(body, scope)

    def taint(self, node: ast.AST | None, scope: Scope) -> str | None:
        """The kind of user data ``node`` carries ("web" / "cli"), or None."""
        if node is None:
            return None
        if isinstance(node, ast.Name):
            kind = scope.tainted.get(node.id)
            return None if kind == "param" else kind
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            full = dotted(node) if isinstance(node, ast.Attribute) else dotted(node.value)
            if full.split(".")[0] == "request" or full.startswith("flask.request"):
                return "web"
            if full == "sys.argv":
                return "cli"
            return self.taint(node.value, scope)
        if isinstance(node, ast.Call):
            name = call_name(node)
            full = dotted(node.func)
            if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Call) and (
                call_name(node.func.value) in SQL_CALLS
            ):
                return None  # cursor.execute(...).fetchone(): rows from the database
            if name in CLI_SOURCES and isinstance(node.func, ast.Name):
                return "cli"
            if full.split(".")[0] == "request":
                return "web"
            if is_sanitizer(name) or name in SQL_CALLS or name.startswith("fetch"):
                return None
            parts = list(node.args) + [k.value for k in node.keywords]
            if isinstance(node.func, ast.Attribute):
                parts.append(node.func.value)
            for part in parts:
                kind = self.taint(part, scope)
                if kind:
                    return kind
            return None
        if isinstance(node, (ast.Compare, ast.Lambda)):
            return None
        for child in ast.iter_child_nodes(node):
            kind = self.taint(child, scope)
            if kind:
                return kind
        return None

    def _is_html(self, node: ast.AST, scope: Scope, walk_assign=None) -> bool:
        """``node`` builds HTML text with unescaped user data in it."""
        if walk_assign is not None:  # summary mode: follow simple assignments inside the function first
            scope = Scope(tainted=dict(scope.tainted))
            for sub in ast.walk(walk_assign):
                if isinstance(sub, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                    self._assign(sub, scope, report=False)
            scope.tainted = {k: ("web" if v == "param" else v) for k, v in scope.tainted.items()}
        if isinstance(node, ast.Name):
            return node.id in scope.html
        if isinstance(node, ast.Call):
            name = call_name(node)
            if name in self.html_returning and any(self.taint(a, scope) for a in node.args):
                return True
            if isinstance(node.func, ast.Attribute) and not is_sanitizer(name) and self._is_html(node.func.value, scope):
                return True  # html.replace(...), html.strip(): still the same unescaped HTML
            if name in ("format", "join") and isinstance(node.func, ast.Attribute):
                return (has_tag(node.func.value) or self._is_html(node.func.value, scope)) and any(
                    self.taint(a, scope) or self._is_html(a, scope) for a in list(node.args) + [k.value for k in node.keywords]
                )
            return False
        if isinstance(node, (ast.JoinedStr, ast.BinOp)):
            if not self.taint(node, scope):
                return any(self._is_html(c, scope) for c in ast.iter_child_nodes(node) if isinstance(c, ast.Name))
            return has_tag(node) or any(
                isinstance(c, ast.Name) and c.id in scope.html for c in ast.walk(node)
            )
        if isinstance(node, ast.IfExp):
            return self._is_html(node.body, scope) or self._is_html(node.orelse, scope)
        return False

    def _assign(self, node: ast.AST, scope: Scope, report: bool = True) -> None:
        value = node.value
        if value is None:
            return
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        kind = self.taint(value, scope)
        html = self._is_html(value, scope)
        names = [n for t in targets for n in _target_names(t)]
        containers = [n for t in targets for n in _container_names(t)]
        for name in containers:  # d[k] = tainted: the container now holds user data
            if kind:
                scope.tainted[name] = kind
            if html:
                scope.html.add(name)
        if _builds_string(value) and kind:
            scope.sql_built.update(names)
        else:
            scope.sql_built.difference_update(names)
        for name in names:
            if isinstance(node, ast.AugAssign):
                kind = kind or scope.tainted.get(name)
                html = html or (name in scope.html and kind is not None) or (kind is not None and has_tag(value))
            if kind:
                scope.tainted[name] = kind
            else:
                scope.tainted.pop(name, None)
            if html:
                scope.html.add(name)
            elif not isinstance(node, ast.AugAssign):
                scope.html.discard(name)

    def _walk_scope(self, body: list[ast.stmt], scope: Scope) -> None:
        for stmt in body:
            self._walk_stmt(stmt, scope)

    def _walk_stmt(self, stmt: ast.stmt, scope: Scope) -> None:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return  # analysed on their own
        for call in _calls_in(stmt):
            self._check_sink(call, scope)
        if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            self._assign(stmt, scope)
        elif isinstance(stmt, (ast.For, ast.AsyncFor)):
            kind = self.taint(stmt.iter, scope)
            if kind:
                for n in ast.walk(stmt.target):
                    if isinstance(n, ast.Name):
                        scope.tainted[n.id] = kind
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                if item.optional_vars is not None and self.taint(item.context_expr, scope):
                    for n in ast.walk(item.optional_vars):
                        if isinstance(n, ast.Name):
                            scope.tainted[n.id] = self.taint(item.context_expr, scope)
        elif isinstance(stmt, ast.Return) and stmt.value is not None and scope.is_route:
            self._check_return(stmt, scope)
        for child_body in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(stmt, child_body, None)
            if isinstance(inner, list):
                for sub in inner:
                    if isinstance(sub, ast.ExceptHandler):
                        self._walk_scope(sub.body, scope)
                    elif isinstance(sub, ast.stmt):
                        self._walk_stmt(sub, scope)
        if isinstance(stmt, ast.Match):
            for case in stmt.cases:
                self._walk_scope(case.body, scope)

    def _check_return(self, stmt: ast.Return, scope: Scope) -> None:
        value = stmt.value
        if isinstance(value, ast.Tuple) and value.elts:
            value = value.elts[0]
        if self._is_html(value, scope):
            self.add("WAL102", stmt, "MEDIUM", "HIGH",
                     "A web handler returns HTML built from request data without escaping (reflected XSS).")
        elif isinstance(value, (ast.JoinedStr, ast.BinOp)) and self.taint(value, scope) == "web":
            self.add("WAL102", stmt, "MEDIUM", "MEDIUM",
                     "A web handler returns text built from request data without escaping (reflected XSS).")
        elif isinstance(value, ast.Call) and call_name(value) == "format" and self.taint(value, scope) == "web":
            self.add("WAL102", stmt, "MEDIUM", "MEDIUM",
                     "A web handler returns text built from request data without escaping (reflected XSS).")

    def _check_sink(self, call: ast.Call, scope: Scope) -> None:
        name = call_name(call)
        args = list(call.args)
        first = args[0] if args else next((k.value for k in call.keywords if k.arg in ("source", "path", "sql")), None)
        if name in TEMPLATE_CALLS and first is not None:
            if self.taint(first, scope):
                self.add("WAL103", call, "HIGH", "HIGH",
                         f"{name}() renders a template built from user input (template injection / XSS).")
                return
        if name in RESPONSE_CALLS and first is not None and (scope.is_route or self.taint(first, scope) == "web"):
            if self._is_html(first, scope):
                self.add("WAL102", call, "MEDIUM", "HIGH",
                         f"{name}() sends HTML built from request data without escaping (reflected XSS).")
                return
        if name in PATH_CALLS and args and not scope.path_guarded:
            target = args[1] if name == "send_from_directory" and len(args) > 1 else args[0]
            if name in ("read_text", "read_bytes", "write_text", "write_bytes") and isinstance(call.func, ast.Attribute):
                target = call.func.value
            if name == "load" and dotted(call.func) not in ("json.load",):
                return
            if name == "save" and not isinstance(call.func, ast.Attribute):
                return
            kind = self.taint(target, scope)
            if kind == "web" or (kind == "cli" and name != "open"):
                self.add("WAL104", call, "MEDIUM", "MEDIUM" if kind == "web" else "LOW",
                         f"{name}() on a path built from user input without normalising it (path traversal).")
                return
        if name in SQL_CALLS and first is not None and len(args) == 1 and not call.keywords:
            query = first.args[0] if isinstance(first, ast.Call) and call_name(first) == "text" and first.args else first
            built = _builds_string(query) or (isinstance(query, ast.Name) and query.id in scope.sql_built)
            if built and self.taint(query, scope):
                self.add("WAL109", call, "HIGH", "MEDIUM",
                         f"{name}() runs a query built from user input (SQL injection).")
                return
        if name in REDIRECT_CALLS and first is not None and not scope.redirect_guarded:
            if self.taint(first, scope) == "web":
                self.add("WAL107", call, "MEDIUM", "MEDIUM",
                         "redirect() to a URL taken from the request without checking it (open redirect).")


# -- AST helpers -------------------------------------------------------------------------------
def _target_names(target: ast.AST) -> list[str]:
    """Names bound by an assignment target (``a``, ``a, b``, ``*rest``), not ``d[k]`` / ``o.x``."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for elt in target.elts for n in _target_names(elt)]
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return []


def _container_names(target: ast.AST) -> list[str]:
    """``d`` in ``d[k] = ...`` (a container that now holds the value)."""
    if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
        return [target.value.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for elt in target.elts for n in _container_names(elt)]
    return []


def _builds_string(node: ast.AST) -> bool:
    """A string made by formatting or concatenation (the shape of an injected query)."""
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return any(isinstance(n, (ast.Constant, ast.JoinedStr)) and isinstance(getattr(n, "value", ""), str)
                   for n in ast.walk(node))
    if isinstance(node, ast.Call) and call_name(node) in ("format", "join") and isinstance(node.func, ast.Attribute):
        return True
    return False


def _params(func) -> list[ast.arg]:
    a = func.args
    return list(a.posonlyargs) + list(a.args) + list(a.kwonlyargs)


def _returns(func):
    for node in _walk_no_nested(func.body):
        if isinstance(node, ast.Return):
            yield node


def _walk_no_nested(body):
    stack = list(body)
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                stack.append(child)


def _all_functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _is_route(func) -> bool:
    for deco in func.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        if call_name(target) in ROUTE_DECORATORS or (isinstance(target, ast.Name) and target.id in ROUTE_DECORATORS):
            return True
    params = [a.arg for a in _params(func)]
    return bool(params) and params[0] == "request"


def _typed_route_params(func) -> set[str]:
    """Route parameters Flask converts to numbers (``<int:id>``): no text of the attacker's."""
    typed = set()
    for deco in func.decorator_list:
        if isinstance(deco, ast.Call):
            for arg in deco.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    typed.update(re.findall(r"<(?:int|float|uuid):(\w+)>", arg.value))
    return typed


def _calls_in(stmt: ast.stmt):
    """Calls in the statement itself, not in the bodies of nested compound statements."""
    if isinstance(stmt, (ast.If, ast.While)):
        roots = [stmt.test]
    elif isinstance(stmt, (ast.For, ast.AsyncFor)):
        roots = [stmt.iter]
    elif isinstance(stmt, (ast.With, ast.AsyncWith)):
        roots = [i.context_expr for i in stmt.items]
    elif isinstance(stmt, (ast.Try, ast.Match)) or hasattr(ast, "TryStar") and isinstance(stmt, ast.TryStar):
        roots = [stmt.subject] if isinstance(stmt, ast.Match) else []
    else:
        roots = [stmt]
    for root in roots:
        for node in ast.walk(root):
            if isinstance(node, ast.Call):
                yield node


def _calls_any(body, names) -> bool:
    return any(isinstance(n, ast.Call) and call_name(n) in names for n in _walk_no_nested(body))


def _mentions(body, attr) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == attr for n in _walk_no_nested(body))


def _compares_dotdot(body) -> bool:
    for n in _walk_no_nested(body):
        if isinstance(n, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in ("..", "../") for c in [n.left, *n.comparators]):
            return True
    return False


def analyse_source(source: str | bytes) -> list[Finding]:
    """All waluigi findings in one module's source; [] when it does not parse."""
    import warnings

    try:
        with warnings.catch_warnings():  # warnings about the scanned code are not the caller's
            warnings.simplefilter("ignore")  # SyntaxWarning (3.12+) or DeprecationWarning (3.11)
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    return sorted(ModuleAnalysis(tree).findings, key=lambda f: (f.line, f.rule))
