"""Where things are: the one configuration contract of notebooks, graders and the lab.

Every endpoint is read from the environment first, then from the running lab's state file,
so the same notebook runs unchanged against the embedded lab or a real cluster.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from opslab.errors import OpslabError

# The checkout this package runs from (an editable install): source/, release/, infrastructure/.
CHECKOUT = Path(__file__).resolve().parents[2]
STATE_FILE_NAME = "lab.env"
_EXPORT = re.compile(r"export ([A-Z][A-Z0-9_]*)=(.*)")


class ConfigError(OpslabError):
    """A setting is missing or the state file cannot be read."""


def lab_home() -> Path:
    """The git-ignored folder holding the lab's state: `$OPSLAB_HOME` or `.opslab` in the checkout."""
    if os.environ.get("OPSLAB_HOME"):
        return Path(os.environ["OPSLAB_HOME"]).resolve()
    return CHECKOUT / ".opslab" if (CHECKOUT / "pyproject.toml").exists() else Path.cwd() / ".opslab"


def state_file() -> Path:
    return lab_home() / STATE_FILE_NAME


def render_exports(values: dict[str, str]) -> str:
    """Shell `export` lines; the state file and `opslab lab env` share this format."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())


def parse_exports(text: str, source: str = "state file") -> dict[str, str]:
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _EXPORT.fullmatch(line.strip())
        try:
            parts = shlex.split(match.group(2)) if match else []
        except ValueError:
            parts = []
        if len(parts) != 1:
            raise ConfigError(
                f"{source} line {number} is not `export NAME=value`: {line[:80]!r}. "
                "Run `opslab lab up` to rewrite it."
            )
        values[match.group(1)] = parts[0]
    return values


def read_state(path: Path | None = None) -> dict[str, str]:
    """The running lab's settings, or {} when no lab has written any."""
    path = path or state_file()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the lab's state file {path}: {error}") from error
    return parse_exports(text, source=str(path))


def setting(name: str) -> str:
    """One endpoint, e.g. `setting("KUBECONFIG")`: the environment wins over the lab's state file."""
    if os.environ.get(name):
        return os.environ[name]
    value = read_state().get(name)
    if not value:
        raise ConfigError(
            f"{name} is not set and no running lab provides it: start the lab with "
            f"`opslab lab up`, or export {name} to point at your cluster."
        )
    return value
