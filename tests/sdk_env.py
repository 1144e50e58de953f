"""The SDKs' own virtual environment, built on first use and reused after.

The SDKs pin old dependencies (alpaca-trade-api 3.2 pins msgpack==1.0.3 and
websockets<11), so they live apart from the proxy's environment and their
clients run as subprocesses.  The environment is rebuilt when the requirements
change.  Location: $ALPACA_PROXY_SDK_VENV, else .venvs/sdk in the repository.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent / "sdk"
REQUIREMENTS = HERE / "requirements.txt"
NO_DEPS = ["alpaca-trade-api==3.2.0"]


def location() -> Path:
    configured = os.environ.get("ALPACA_PROXY_SDK_VENV")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent / ".venvs" / "sdk"


def python() -> str:
    """The venv's interpreter, building the venv first if it is missing or stale."""
    venv = location()
    interpreter = venv / "bin" / "python"
    stamp = venv / ".requirements-sha256"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes() + repr(NO_DEPS).encode()).hexdigest()
    if interpreter.exists() and stamp.exists() and stamp.read_text() == wanted:
        return str(interpreter)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(interpreter), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + ["-r", str(REQUIREMENTS)], check=True)
    subprocess.run(pip + ["--no-deps"] + NO_DEPS, check=True)
    stamp.write_text(wanted)
    return str(interpreter)


def script(name: str) -> str:
    return str(HERE / name)


if __name__ == "__main__":
    print(python())
