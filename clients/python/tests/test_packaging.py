"""The package as users get it: `python -m build` makes a wheel and an sdist,
and the wheel installs into a clean virtualenv and works there."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import jobwire
from harness import Server

PACKAGE = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path = PACKAGE) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_build_install_and_use(tmp_path: Path, server: Server) -> None:
    dist = tmp_path / "dist"
    # --no-isolation: the build backend pinned in requirements-dev.txt is used
    # as installed, without fetching another one.
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist))
    wheels = list(dist.glob("jobwire-*.whl"))
    sdists = list(dist.glob("jobwire-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    # pyproject.toml's version and jobwire.__version__ agree.
    assert wheels[0].name == f"jobwire-{jobwire.__version__}-py3-none-any.whl"

    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        text = wheel.read(metadata).decode()
    assert "jobwire/py.typed" in names
    assert "jobwire/__init__.py" in names
    assert not any("tests/" in n for n in names)
    assert "Requires-Python: >=3.9" in text
    requires = sorted(line for line in text.splitlines() if line.startswith("Requires-Dist:"))
    assert requires == ["Requires-Dist: httpx<1,>=0.25", "Requires-Dist: websockets>=15.0"]

    with tarfile.open(sdists[0]) as sdist:
        members = sdist.getnames()
    assert any(m.endswith("/pyproject.toml") for m in members)
    assert any(m.endswith("/src/jobwire/_client.py") for m in members)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    python = str(venv / "bin" / "python")
    # The runtime dependencies at the versions the tests pinned.
    run(
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-c",
        str(PACKAGE / "requirements-dev.txt"),
        str(wheels[0]),
    )
    out = run(
        python,
        "-c",
        (
            "import sys, jobwire, pathlib\n"
            "assert 'site-packages' in jobwire.__file__, jobwire.__file__\n"
            "assert (pathlib.Path(jobwire.__file__).parent / 'py.typed').exists()\n"
            "try:\n"
            "    jobwire.Client(sys.argv[1], token='not.a.jwt').get_job('x')\n"
            "except jobwire.Unauthorized as e:\n"
            "    print('ok', jobwire.__version__, e.code)\n"
        ),
        server.url,
        cwd=tmp_path,
    )
    assert out.strip() == f"ok {jobwire.__version__} unauthorized"
