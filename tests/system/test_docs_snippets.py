"""The code blocks of README.md, web/README.md, bench/README.md and docs/*.md, checked as printed.

A block's info string says what it is: ```python runs against a real service process,
```ts/```tsx/```js are type-checked (`tsc -b`) and built (`vite build`) in a fresh Vite app made
of the configuration the README shows (```ts file=vite.config.ts, ```jsonc file=tsconfig.app.json)
and the packed package that `make test-example` installed in examples/vite-react (```ts node:
type-checked as a Node 20 module against that package, `ws` and Node's types instead), ```json
parses, ```promql passes `promtool check rules`, and ```sh names only `make` targets, `python -m`
modules and flags, `npm run` scripts, tarballs and repository paths that exist. ```text (output,
diagrams) and any block whose info string says `illustrative` are not run; every other block
fails the first test, so a new snippet is either checked or explicitly marked. Commands quoted
inline in the text (`python -m bench.scale --sizes ...`, `make bench-scale`) are checked as
```sh lines are.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from harness.clients import wait_bound
from harness.processes import ROOT, ServiceProcess, as_service, shared_env
from tests.system.test_python_client import seed_position

DOCS = [
    ROOT / "README.md",
    ROOT / "web" / "README.md",
    ROOT / "bench" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
EXAMPLE = ROOT / "examples" / "vite-react"
INSTALLED = EXAMPLE / "node_modules" / "@realtime-tasks" / "web" / "package.json"
CHECKED = {"python", "ts", "tsx", "js", "jsonc", "json", "promql", "sh"}
ILLUSTRATIVE = {"text"}


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its info string's words, and its text."""

    doc: Path
    line: int
    info: tuple[str, ...]
    code: str

    @property
    def lang(self) -> str:
        return self.info[0] if self.info else ""

    @property
    def illustrative(self) -> bool:
        return self.lang in ILLUSTRATIVE or "illustrative" in self.info

    @property
    def node(self) -> bool:
        """A Node 20 program (```ts node), not a module of the browser app."""
        return "node" in self.info[1:]

    @property
    def file(self) -> str | None:
        """The path a `file=…` attribute gives the block in the fresh app, if any."""
        return next((word[5:] for word in self.info if word.startswith("file=")), None)

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


@cache
def blocks() -> tuple[Block, ...]:
    found: list[Block] = []
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").split("\n")
        start: int | None = None
        for number, line in enumerate(lines, 1):
            if not line.startswith("```"):
                continue
            if start is None:
                start = number
            else:
                info = tuple(lines[start - 1][3:].split())
                found.append(Block(doc, start, info, "\n".join(lines[start : number - 1]) + "\n"))
                start = None
        assert start is None, f"{doc}:{start}: unclosed code block"
    return tuple(found)


def checked(*langs: str) -> list[Block]:
    return [b for b in blocks() if b.lang in langs and not b.illustrative]


def test_every_block_is_checked_or_marked_illustrative() -> None:
    """A block whose language no test runs must say `text` or `illustrative` in its info string."""
    unmarked = [f"{b} ```{' '.join(b.info)}" for b in blocks() if not b.illustrative and b.lang not in CHECKED]
    assert not unmarked, f"unchecked blocks (mark them ```text or add `illustrative`): {unmarked}"
    assert checked("python") and checked("ts", "tsx") and checked("sh")


def heading_ids(doc: Path) -> set[str]:
    """The ids GitHub gives `doc`'s headings: lower case, punctuation but `-` and `_` dropped,
    spaces as `-`, and `-1`, `-2` after a repeat."""
    ids: set[str] = set()
    inside = False
    for line in doc.read_text(encoding="utf-8").splitlines():
        inside ^= line.startswith("```")
        if inside or not re.match(r"#{1,6} ", line):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        unique, n = slug, 0
        while unique in ids:
            n += 1
            unique = f"{slug}-{n}"
        ids.add(unique)
    return ids


def test_links_to_a_heading_find_it() -> None:
    """Every `[text](#id)` and `[text](path.md#id)` of the docs names a file and a heading in it."""
    found = 0
    for doc in DOCS:
        for target, anchor in re.findall(r"\]\(([^)\s#]*)#([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://")):
                continue
            linked = (doc.parent / target) if target else doc
            assert linked.exists(), f"{doc.relative_to(ROOT)}: link to {target}, which does not exist"
            if linked.suffix == ".md":
                assert anchor in heading_ids(linked), (
                    f"{doc.relative_to(ROOT)}: no heading #{anchor} in {target or doc.name}"
                )
                found += 1
    assert found > 5  # the docs link to their sections a dozen times; none found means the scan broke


def test_json_blocks_parse() -> None:
    """Every ```json block is one JSON value or JSON lines."""
    for block in checked("json"):
        try:
            json.loads(block.code)
        except json.JSONDecodeError:
            for line in filter(None, block.code.splitlines()):
                json.loads(line)


def test_promql_blocks_pass_promtool(tmp_path: Path) -> None:
    """Every ```promql block is a valid expression (`promtool check rules`)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `make system-deps`"
    rules = [{"record": f"docs:snippet_{i}", "expr": b.code.strip()} for i, b in enumerate(checked("promql"))]
    path = tmp_path / "rules.json"  # YAML is a superset of JSON
    path.write_text(json.dumps({"groups": [{"name": "docs", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- shell blocks: every command they name exists ---------------------------------------------


@cache
def make_targets() -> frozenset[str]:
    makefile = (ROOT / "Makefile").read_text()
    return frozenset(m.group(1) for m in re.finditer(r"^([A-Za-z][\w-]*):", makefile, re.M))


@cache
def help_text(module: str, command: str | None) -> str:
    args = [sys.executable, "-m", module, *([command] if command else []), "--help"]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(args[1:])}: {result.stderr}"
    return result.stdout


def shell_checks(where: object, code: str) -> list[str]:
    """What `code` (a block, or one inline span at `where`) names, each checked; the list of
    what was checked (empty: nothing)."""
    done: list[str] = []
    web = json.loads((ROOT / "web" / "package.json").read_text())
    for raw in code.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw)
        for match in re.finditer(r"\bmake((?:\s+[a-z][\w-]*)+)", line):
            for target in match.group(1).split():
                assert target in make_targets(), f"{where}: `make {target}`: no such target"
                done.append(f"make {target}")
        for match in re.finditer(r"python -m (\w+(?:\.\w+)*)((?:\s+[^\s|&;)]+)*)", line):
            module, words = match.group(1), match.group(2).split()
            command = words[0] if words and re.fullmatch(r"[a-z]+", words[0]) else None
            text = help_text(module, command)
            if command:
                assert command in help_text(module, None), f"{where}: `python -m {module} {command}`"
            # `[--sse | --poll]`: optional flags, written as a usage line writes them
            for flag in (w.strip("[]").split("=")[0] for w in words if w.strip("[]").startswith("--")):
                assert re.search(rf"{re.escape(flag)}\b", text), f"{where}: `python -m {module}`: no {flag}"
            done.append(f"python -m {module} {' '.join(words)}".strip())
        for match in re.finditer(r"\bnpm (?:run (\S+)|(test)\b)", line):
            script = match.group(1) or match.group(2)
            assert script in web["scripts"], f"{where}: `npm run {script}`: not in web/package.json"
            done.append(f"npm run {script}")
        for tarball in re.findall(r"[\w.-]+\.tgz", line):
            packed = f"{web['name'].lstrip('@').replace('/', '-')}-{web['version']}.tgz"
            assert tarball == packed, f"{where}: {tarball}, but `npm pack` writes {packed}"
            done.append(tarball)
        for path in re.findall(r"(?<![\w/.~-])((?:k8s|examples|scripts|docs|web|service|tests)/[\w./-]*)", line):
            assert (ROOT / path).exists(), f"{where}: {path} does not exist"
            done.append(path)
    return done


def test_shell_blocks_name_only_commands_that_exist() -> None:
    """Every ```sh block's make targets, python -m modules and flags, npm scripts and paths exist."""
    for block in checked("sh"):
        assert shell_checks(block, block.code), f"{block}: names nothing checkable; mark it `sh illustrative`"


def inline_commands() -> list[tuple[str, str]]:
    """Every inline code span of the docs (outside blocks) that runs something: `python -m ...`
    or `make <target>`, with where it is. A span may wrap over lines, never over a paragraph."""
    spans: list[tuple[str, str]] = []
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").split("\n")
        inside = False
        for number, line in enumerate(lines):
            fence = line.startswith("```")
            inside ^= fence
            if inside or fence:
                lines[number] = ""  # blocks are checked as blocks; their lines end paragraphs here
        text = "\n".join(lines)
        for paragraph in re.finditer(r"(?:.+\n?)+", text):
            for span in re.finditer(r"`([^`]+)`", paragraph.group()):
                command = " ".join(span.group(1).split())
                if re.search(r"python -m \w|\bmake [a-z]", command):
                    number = text.count("\n", 0, paragraph.start() + span.start()) + 1
                    spans.append((f"{doc.relative_to(ROOT)}:{number}", command))
    return spans


def test_inline_commands_name_only_flags_that_exist() -> None:
    """The commands quoted in running text (a measurement's command, a flag named in passing) are
    pasted as often as blocks: their modules, subcommands, flags and make targets exist too."""
    spans = inline_commands()
    assert len(spans) > 20  # the docs quote dozens; none found means the scan broke
    for where, span in spans:
        shell_checks(where, span)


# --- Python: run against a real service -------------------------------------------------------


def follows_the_stream(block: Block) -> bool:
    """A consumer (iterates a client, never ends) rather than a script that finishes."""
    return "async for" in block.code or re.search(r"^\s*for .* in client", block.code, re.M) is not None


@pytest.mark.gen_test(timeout=180)
async def test_python_blocks_run_against_a_service(tmp_path: Path, mongo_uri: str) -> None:
    """The scripts run to exit 0; then each consumer prints every event type they published."""
    scripts = [b for b in checked("python") if not follows_the_stream(b)]
    consumers = [b for b in checked("python") if follows_the_stream(b)]
    assert scripts and consumers
    env = {**shared_env(mongo_uri), "PRESENCE": "0"}
    process = ServiceProcess(tmp_path, env)
    await asyncio.to_thread(process.start)
    try:
        service = as_service(process)
        position = tmp_path / "worker.position"
        await seed_position(service, service.token(sub=1, roles=("publisher",)), position)
        snippet_env = {
            **os.environ,
            **env,
            # What the README tells the reader to set (REALTIME_TOKEN: `python -m service token --sub 7`).
            "REALTIME_URL": process.url,
            "REALTIME_TOKEN": service.token(sub=7),
            "POSITION_FILE": str(position),
            "PYTHONPATH": str(ROOT),
        }
        published: list[str] = []
        for block in scripts:
            result = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-c", block.code],
                env=snippet_env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=wait_bound(60),
            )
            assert result.returncode == 0, f"{block}: {result.stderr}"
            published += re.findall(r'"type": "([^"]+)"', block.code)
        assert published
        for block in consumers:
            await expect_lines(block, snippet_env, tmp_path, published)
    finally:
        process.stop()


async def expect_lines(block: Block, env: dict[str, str], cwd: Path, types: list[str]) -> None:
    consumer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", block.code, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE
    )
    assert consumer.stdout is not None
    missing = set(types)
    try:
        while missing:
            line = await asyncio.wait_for(consumer.stdout.readline(), wait_bound(30))
            assert line, f"{block}: ended before printing {missing}"
            missing -= set(line.decode().split())
    finally:
        consumer.kill()
        await consumer.wait()


def test_readme_worker_is_examples_python_worker() -> None:
    """The README's worker is examples/python/worker.py (after its docstring), as the README says."""
    worker = (ROOT / "examples" / "python" / "worker.py").read_text()
    [block] = [b for b in checked("python") if "RealtimeClient(" in b.code]
    assert worker.endswith("\n\n" + block.code)


# --- TypeScript and JavaScript: a fresh Vite app ---------------------------------------------


def jsonc(text: str) -> Any:
    return json.loads("\n".join(line for line in text.splitlines() if not line.strip().startswith("//")))


def fresh_app(app: Path) -> list[str]:
    """A Vite + React + TS app: the template's configs (examples/vite-react without its `paths`),
    the README's vite.config.ts and tsconfig.app.json additions, every snippet; its modules."""
    app.mkdir()
    (app / "node_modules").symlink_to(EXAMPLE / "node_modules", target_is_directory=True)
    (app / "package.json").write_text('{"name": "docs-snippets", "private": true, "type": "module"}\n')
    shutil.copy(EXAMPLE / "tsconfig.json", app / "tsconfig.json")
    for name in ("tsconfig.app.json", "tsconfig.node.json"):
        config = json.loads((EXAMPLE / name).read_text())
        config["compilerOptions"].pop("paths", None)
        # Build info next to the app, not in the example's node_modules/.tmp.
        config["compilerOptions"]["tsBuildInfoFile"] = f"./.tsbuild/{name}.tsbuildinfo"
        (app / name).write_text(json.dumps(config, indent=2))
    modules: list[str] = []
    for block in checked("ts", "tsx", "js", "jsonc"):
        if block.node:
            continue
        if block.file == "tsconfig.app.json":
            config = json.loads((app / block.file).read_text())
            config["compilerOptions"].update(jsonc(block.code)["compilerOptions"])
            (app / block.file).write_text(json.dumps(config, indent=2))
            continue
        if block.lang == "jsonc":
            jsonc(block.code)
            continue
        # A browser .js snippet is checked as TypeScript (strict), which it must also be.
        extension = "tsx" if block.lang == "tsx" else "ts"
        where = block.doc.relative_to(ROOT).as_posix().replace("/", "_")
        name = block.file or f"src/snippets/{where}_{block.line}.{extension}"
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(block.code if block.file else block.code + "\nexport {};\n")
        if name.startswith("src/"):
            modules.append(name)
    # Used, so that the bundle keeps (and must resolve) every module and what it imports.
    main = "".join(f'import * as m{i} from "./{m.removeprefix("src/")}";\n' for i, m in enumerate(modules))
    main += f"console.log([{', '.join(f'm{i}' for i in range(len(modules)))}]);\n"
    (app / "src" / "main.ts").write_text(main)
    (app / "index.html").write_text('<!doctype html><script type="module" src="/src/main.ts"></script>\n')
    return modules


def test_typescript_blocks_typecheck_and_build_in_a_fresh_vite_app(tmp_path: Path) -> None:
    """`tsc -b` and `vite build` pass on the README's config and every TS/JS snippet."""
    assert INSTALLED.is_file(), f"{INSTALLED} is missing: run `make test-example` (packs web/ and installs it)"
    app = tmp_path / "app"
    modules = fresh_app(app)
    assert "src/hooks/use-realtime-tasks.ts" in modules and "src/pages/TasksPage.tsx" in modules
    assert (app / "vite.config.ts").is_file(), "the README shows no vite.config.ts"
    bin_ = app / "node_modules" / ".bin"
    for command in ([str(bin_ / "tsc"), "-b"], [str(bin_ / "vite"), "build", "--logLevel", "warn"]):
        result = subprocess.run(command, cwd=app, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}{result.stderr}"


# --- TypeScript for Node 20 (```ts node) -----------------------------------------------------

NODE_TSCONFIG = {
    "compilerOptions": {
        "target": "ES2022",
        "lib": ["ES2022"],
        "module": "NodeNext",
        "moduleResolution": "NodeNext",
        "types": ["node"],
        "strict": True,
        "noEmit": True,
        "skipLibCheck": True,
    },
    "include": ["*.ts"],
}


def test_node_blocks_typecheck_as_node_modules(tmp_path: Path) -> None:
    """Every ```ts node block passes `tsc` as a Node ES module with the packed package and `ws`."""
    assert INSTALLED.is_file(), f"{INSTALLED} is missing: run `make test-example` (packs web/ and installs it)"
    blocks_ = [b for b in checked("ts") if b.node]
    assert blocks_, "no ```ts node block: web/README.md's Node 20 section shows one"
    modules = tmp_path / "node_modules"
    (modules / "@realtime-tasks").mkdir(parents=True)
    (modules / "@types").mkdir()
    # The package as an app installs it; `ws` and its types from web/'s devDependencies.
    (modules / "@realtime-tasks" / "web").symlink_to(INSTALLED.parent, target_is_directory=True)
    for name in ("ws", "@types/ws", "@types/node"):
        (modules / name).symlink_to(ROOT / "web" / "node_modules" / name, target_is_directory=True)
    (tmp_path / "package.json").write_text('{"name": "docs-node-snippets", "private": true, "type": "module"}\n')
    (tmp_path / "tsconfig.json").write_text(json.dumps(NODE_TSCONFIG, indent=2))
    for block in blocks_:
        (tmp_path / f"snippet_{block.line}.ts").write_text(block.code)
    tsc = EXAMPLE / "node_modules" / ".bin" / "tsc"
    result = subprocess.run([str(tsc), "-p", "."], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{[str(b) for b in blocks_]}:\n{result.stdout}{result.stderr}"


def test_readme_node_snippet_is_the_websocket_script() -> None:
    """web/README.md's Node 20 snippet is web/test/node/receive-one-websocket.mjs (after its comment)."""
    script = (ROOT / "web" / "test" / "node" / "receive-one-websocket.mjs").read_text()
    code = "".join(line for line in script.splitlines(keepends=True) if not line.startswith("//"))
    [block] = [b for b in checked("ts") if b.node and "receive-one-websocket" in b.doc.read_text()]
    assert block.code == code
