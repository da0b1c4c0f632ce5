"""`make setup` installs with uv from the package sources pip is configured with (scripts/uv_args.py)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from uv_args import uv_flags  # noqa: E402


def test_pip_sources_become_uv_flags_once_each_in_order():
    listed = "\n".join([
        ":env:.find-links='/opt/wheels'",
        ":env:.default-timeout='180'",
        "global.constraint='/etc/pip/constraints.txt'",
        "global.extra-index-url='file:///a/simple file:///b/simple'",
        "global.find-links='/opt/wheels'",
        "install.index-url='https://mirror.example/simple'",
        "global.cert='/etc/ssl/certs/ca.crt'",
    ])
    assert uv_flags(listed) == ["--find-links", "/opt/wheels", "--constraint", "/etc/pip/constraints.txt",
                                "--extra-index-url", "file:///a/simple", "--extra-index-url", "file:///b/simple",
                                "--index-url", "https://mirror.example/simple"]
    assert uv_flags("") == []


def test_the_script_prints_shell_words():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "uv_args.py")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    words = p.stdout.split()
    assert len(words) % 2 == 0 and all(w.startswith("--") for w in words[::2])
