"""pip's configured package sources as `uv pip install` flags.

uv reads no pip.conf and no PIP_* variable, but set-up must install from wherever `pip install` would (a local mirror,
a wheel folder, a constraints file), so `make setup` passes pip's own configuration on. Prints the flags, shell-quoted.
"""
import shlex
import subprocess
import sys

FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraint"}


def uv_flags(pip_config: str) -> list[str]:
    """Flags from ``pip config list`` output (``scope.key='value'``; a value may list several, space-separated)."""
    pairs: dict[tuple[str, str], None] = {}  # in order, each once (pip lists a setting per scope)
    for line in pip_config.splitlines():
        key, sep, value = line.partition("=")
        flag = FLAGS.get(key.rpartition(".")[2])
        if sep and flag and value.strip():
            pairs.update(((flag, v), None) for v in shlex.split(value)[0].split())
    return [x for pair in pairs for x in pair]


if __name__ == "__main__":
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    print(shlex.join(uv_flags(listed)))
