"""No synchronous wait inside async code: serve's edge, DNS server, job heartbeats and
reconcile share one event loop, and a blocking call anywhere in it freezes all of them
(a stop waiting 14 s for a service froze every environment's traffic for as long).

A static check over branchline's source: an `async def` may not call, directly, a
blocking primitive (sleeping, waiting for a process, a subprocess, a socket, a lock
file) nor a plain function of branchline that calls one, however deep. Such work goes
through `asyncio.to_thread` (the function is passed, not called). The analysis
resolves calls to branchline's own functions by name: module functions, imported
functions and modules, `self.` methods of the same class.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src" / "branchline"

# module -> names whose call blocks the calling thread until something else happens.
PRIMITIVES: dict[str, frozenset[str]] = {
    "time": frozenset({"sleep"}),
    "subprocess": frozenset({"run", "call", "check_call", "check_output", "getoutput"}),
    "os": frozenset({"wait", "waitpid", "wait4", "system"}),
    "socket": frozenset({"create_connection", "getaddrinfo", "gethostbyname"}),
    "urllib.request": frozenset({"urlopen"}),
    "fcntl": frozenset({"flock", "lockf"}),
    "select": frozenset({"select", "poll"}),
    "psycopg": frozenset({"connect"}),
    "httpx": frozenset({"get", "post", "put", "delete", "request", "Client"}),
    "shutil": frozenset({"rmtree", "copytree"}),
}
# Methods that block whatever object they are called on (a Popen, an Event), unless
# awaited or handed on (`create_task(process.wait())` makes a coroutine).
BLOCKING_METHODS = frozenset({"communicate", "wait"})


@dataclass
class Function:
    qualname: str  # module:Class.name or module:name
    node: ast.FunctionDef | ast.AsyncFunctionDef
    module: Module
    owner: str | None  # its class, for `self.` calls
    enclosing: tuple[Function, ...] = ()  # the functions it is defined in (a closure)

    @property
    def is_async(self) -> bool:
        return isinstance(self.node, ast.AsyncFunctionDef)


@dataclass
class Module:
    name: str
    path: Path
    # local name -> "module" (an imported module) or "module:function"
    imports: dict[str, str] = field(default_factory=dict)
    functions: dict[str, Function] = field(default_factory=dict)  # qualname -> Function


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def load_modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        name = _module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        module = Module(name, path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    module.imports[alias.asname or alias.name.split(".")[0]] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module if node.level == 0 else _relative(name, node)
                for alias in node.names:
                    module.imports[alias.asname or alias.name] = f"{base}:{alias.name}"
        for node in tree.body:
            _collect(module, node, None)
        modules[name] = module
    return modules


def _relative(name: str, node: ast.ImportFrom) -> str:
    package = name.split(".")[: -node.level]
    return ".".join([*package, node.module or ""])


def _collect(
    module: Module, node: ast.stmt, owner: str | None, enclosing: tuple[Function, ...] = ()
) -> None:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        inner = "".join(f"{f.node.name}.<locals>." for f in enclosing)
        qualname = f"{module.name}:{owner + '.' if owner else ''}{inner}{node.name}"
        function = Function(qualname, node, module, owner, enclosing)
        module.functions[qualname] = function
        for item in _nested_defs(node):  # functions defined inside it: closures
            _collect(module, item, owner, (*enclosing, function))
    elif isinstance(node, ast.ClassDef):
        for item in node.body:
            _collect(module, item, node.name)


def _direct_calls(function: Function) -> Iterator[tuple[ast.Call, bool]]:
    """The calls a function makes itself (not in nested functions or lambdas), each
    with whether it is awaited."""
    awaited: set[int] = set()

    def visit(node: ast.AST) -> Iterator[tuple[ast.Call, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.Await) and isinstance(child.value, ast.Call):
                awaited.add(id(child.value))
            if isinstance(child, ast.Call):
                # An argument of another call is handed on, not waited for here
                # (`asyncio.create_task(process.wait())`).
                for argument in (*child.args, *(k.value for k in child.keywords)):
                    if isinstance(argument, ast.Call):
                        awaited.add(id(argument))
                yield child, id(child) in awaited
            yield from visit(child)

    yield from visit(function.node)


def _is_generator(function: Function) -> bool:
    """Calling it only makes a generator (a `contextmanager`'s too): nothing runs."""
    return any(isinstance(node, ast.Yield | ast.YieldFrom) for node in _own_nodes(function.node))


def _nested_defs(node: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The functions defined directly in `node`'s body (not inside those)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            yield child
        elif not isinstance(child, ast.Lambda | ast.ClassDef):
            yield from _nested_defs(child)


def _own_nodes(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        yield child
        yield from _own_nodes(child)


def _annotations(function: Function) -> dict[str, str]:
    """Parameters annotated with a plain class name: `demo: Demo` -> {"demo": "Demo"}."""
    found: dict[str, str] = {}
    for scope in (*function.enclosing, function):  # a closure sees its parents' names
        arguments = scope.node.args
        for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs):
            if isinstance(a.annotation, ast.Name):
                found[a.arg] = a.annotation.id
    return found


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


class Analysis:
    def __init__(self, modules: dict[str, Module]) -> None:
        self.modules = modules
        self.functions = {q: f for m in modules.values() for q, f in m.functions.items()}
        self._blocking: dict[str, str | None] = {}

    def primitive(self, function: Function, call: ast.Call) -> str | None:
        """The blocking primitive `call` is, if it is one ("time.sleep")."""
        dotted = _dotted(call.func)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        target = function.module.imports.get(head)
        if target is None:
            return None
        if ":" in target:  # `from time import sleep`
            module, name = target.split(":")
            full = f"{module}.{name}" + (f".{rest}" if rest else "")
        else:
            full = f"{target}.{rest}" if rest else target
        module, _, name = full.rpartition(".")
        if full == "fcntl.flock" and any("LOCK_NB" in ast.unparse(a) for a in call.args):
            return None  # asks, never waits
        return full if name in PRIMITIVES.get(module, ()) else None

    def resolve(self, function: Function, call: ast.Call) -> Function | None:
        """The branchline function `call` calls, when it can be named."""
        dotted = _dotted(call.func)
        if dotted is None:
            return None
        module = function.module
        if dotted.startswith("self.") and function.owner and dotted.count(".") == 1:
            return self.functions.get(f"{module.name}:{function.owner}.{dotted[5:]}")
        if dotted.count(".") == 1:  # `demo.git()`, where the parameter is `demo: Demo`
            variable, method = dotted.split(".")
            cls = _annotations(function).get(variable)
            if cls is not None:
                where = module.imports.get(cls, f"{module.name}:{cls}")
                found = self.functions.get(f"{where}.{method}" if ":" in where else "")
                if found is not None:
                    return found
        if "." not in dotted:
            for scope in reversed((*function.enclosing, function)):
                prefix = scope.qualname + ".<locals>."
                closure = self.functions.get(prefix + dotted)
                if closure is not None:
                    return closure
            local = self.functions.get(f"{module.name}:{dotted}")
            if local is not None:
                return local
            target = module.imports.get(dotted, "")
            if ":" in target:
                source, name = target.split(":")
                return self.functions.get(f"{source}:{name}")
            return None
        head, _, name = dotted.rpartition(".")
        target = module.imports.get(head, "")
        if ":" in target:  # `from branchline import processes` -> processes.stop
            target = target.replace(":", ".")
        return self.functions.get(f"{target}:{name}") if "." not in name else None

    def blocking(self, function: Function, seen: frozenset[str] = frozenset()) -> str | None:
        """Why a plain function blocks (the chain of calls to a primitive), or None."""
        if function.is_async or function.qualname in seen or _is_generator(function):
            return None  # a generator's body runs when it is iterated or entered
        if function.qualname in self._blocking:
            return self._blocking[function.qualname]
        found: str | None = None
        for call, _awaited in _direct_calls(function):
            primitive = self.primitive(function, call)
            if primitive is not None:
                found = f"{function.qualname} -> {primitive}"
                break
            callee = self.resolve(function, call)
            if callee is not None:
                deeper = self.blocking(callee, seen | {function.qualname})
                if deeper is not None:
                    found = f"{function.qualname} -> {deeper}"
                    break
        self._blocking[function.qualname] = found
        return found

    def problems(self) -> list[str]:
        found = []
        for function in self.functions.values():
            if not function.is_async:
                continue
            for call, awaited in _direct_calls(function):
                line = f"{function.module.path.relative_to(SOURCE.parent)}:{call.lineno}"
                primitive = self.primitive(function, call)
                if primitive is not None:
                    found.append(f"{line} {function.qualname} calls {primitive}")
                    continue
                if (
                    not awaited
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr in BLOCKING_METHODS
                    and _dotted(call.func.value) not in ("asyncio",)
                ):
                    found.append(f"{line} {function.qualname} calls .{call.func.attr}()")
                    continue
                callee = self.resolve(function, call)
                if callee is not None and (chain := self.blocking(callee)) is not None:
                    found.append(f"{line} {function.qualname} calls {chain}")
        return sorted(found)


def test_no_async_function_calls_a_blocking_one() -> None:
    problems = Analysis(load_modules()).problems()
    assert not problems, "blocking calls in async code (use asyncio.to_thread):\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("import time\nasync def f():\n    time.sleep(1)\n", True),
        ("from time import sleep\nasync def f():\n    sleep(1)\n", True),
        ("import subprocess\ndef g():\n    subprocess.run(['x'])\nasync def f():\n    g()\n", True),
        ("import asyncio, time\nasync def f():\n"
         "    await asyncio.to_thread(time.sleep, 1)\n", False),
        ("import asyncio\nasync def f(p):\n    await p.wait()\n", False),
        ("async def f(p):\n    p.wait()\n", True),
        ("import os\nclass C:\n    def s(self):\n        os.waitpid(1, 0)\n"
         "    async def f(self):\n        self.s()\n", True),
        ("import time\nclass D:\n    def g(self):\n        time.sleep(1)\n"
         "async def f(d: D):\n    d.g()\n", True),
        ("import contextlib, subprocess\n@contextlib.contextmanager\ndef w():\n"
         "    subprocess.run(['git'])\n    yield\nasync def f():\n    w()\n", False),
    ],
)  # fmt: skip
def test_the_check_sees_blocking_calls(tmp_path: Path, source: str, caught: bool) -> None:
    """The analysis itself: what it must catch, and what it must let through."""
    module = Module("sample", SOURCE / "sample.py")
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module.imports[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                module.imports[alias.asname or alias.name] = f"{node.module}:{alias.name}"
    for node in tree.body:
        _collect(module, node, None)
    assert bool(Analysis({"sample": module}).problems()) is caught
