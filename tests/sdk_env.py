"""The SDKs' own virtual environments, built on first use and reused after.

The SDKs pin old dependencies (alpaca-trade-api 3.2 pins msgpack==1.0.3 and
websockets<11; 1.5 wants websockets<10), so they live apart from the proxy's
environment and their clients run as subprocesses.  An environment is rebuilt
when its requirements change.  Location: $ALPACA_PROXY_SDK_VENV (a folder for
all of them), else .venvs/ in the repository.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent / "sdk"

#: name -> (requirements file, packages installed with --no-deps)
ENVIRONMENTS = {
    "sdk": ("requirements.txt", ["alpaca-trade-api==3.2.0"]),
    "ata15": ("requirements-ata15.txt", ["alpaca-trade-api==1.5.0"]),
    "polygon": ("requirements-polygon.txt", []),
}


def location(name: str) -> Path:
    configured = os.environ.get("ALPACA_PROXY_SDK_VENV")
    base = Path(configured) if configured else Path(__file__).resolve().parent.parent / ".venvs"
    return base / name


def python(name: str = "sdk") -> str:
    """The environment's interpreter, building it first if missing or stale."""
    requirements, no_deps = ENVIRONMENTS[name]
    venv = location(name)
    interpreter = venv / "bin" / "python"
    stamp = venv / ".requirements-sha256"
    wanted = hashlib.sha256((HERE / requirements).read_bytes() + repr(no_deps).encode())
    if interpreter.exists() and stamp.exists() and stamp.read_text() == wanted.hexdigest():
        return str(interpreter)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(interpreter), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + ["-r", str(HERE / requirements)], check=True)
    if no_deps:
        subprocess.run(pip + ["--no-deps"] + no_deps, check=True)
    stamp.write_text(wanted.hexdigest())
    return str(interpreter)


def script(name: str) -> str:
    return str(HERE / name)


#: The JS SDK, from the npm registry, for node.
JS_PACKAGES = ["@alpacahq/alpaca-trade-api@3.1.3"]
#: The 4.x line (now npm's latest): per-stream URLs, plain ws:// works.
JS4_PACKAGES = ["@alpacahq/alpaca-trade-api@4.0.2"]
JS_HERE = Path(__file__).parent / "js"


def node_modules(name: str = "js", packages: list[str] = JS_PACKAGES) -> str:
    """A node_modules folder holding a JS SDK (for NODE_PATH), installed on first use."""
    prefix = location(name)
    modules = prefix / "node_modules"
    stamp = prefix / ".packages"
    if not (modules.exists() and stamp.exists() and stamp.read_text() == repr(packages)):
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-save", "--no-audit",
                        "--no-fund", "--loglevel=error"] + packages, check=True)
        stamp.write_text(repr(packages))
    return str(modules)


def js_script(name: str) -> str:
    return str(JS_HERE / name)


if __name__ == "__main__":
    for environment in sys.argv[1:] or list(ENVIRONMENTS):
        print(python(environment))
