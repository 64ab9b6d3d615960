"""Build the serving Bento: the BentoML service of ``serving/`` with the project's wheel and a registry.

Models are not packed into the Bento: the service reads the promoted version of every scenario
from the registry at run time, so one Bento serves every scenario and picks up promotions without a
rebuild. `build_bento` builds the project's wheel, writes a build bentofile from
``serving/bentofile.yaml`` with the registry reference (``LONGTAIL_REGISTRY``) and the serving
overrides as environment variables, runs ``bentoml build`` in a scratch build context and returns
the Bento's tag. ``BENTOML_HOME`` (or ``bentoml_home``) decides the Bento store it lands in. The
Bento's version is a digest of its inputs (the packaged sources, the registry, the overrides), so a
rebuild with nothing changed returns the Bento built before.

Example:
    >>> tag = build_bento("s3://models/registry", bentoml_home="runs/ws/bentoml")
    >>> tag
    'longtail_serving:3q2x...'
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

SERVING_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = SERVING_DIR.parent  # where pyproject.toml sits in a checkout or the image
PACKAGES = ("longtail", "feature_store", "components", "pipelines", "serving", "monitoring")  # packages.find


class BentoBuildError(RuntimeError):
    """``bentoml build`` (or the wheel it packs) failed; the message holds the tool's output tail."""


def _run(cmd: list[str], env: dict[str, str], what: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise BentoBuildError(f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


def build_bento(registry: str, *, overrides: list[str] | None = None, bentoml_home: str | Path | None = None,
                project_root: str | Path = PROJECT_ROOT) -> str:
    """Build the serving Bento for a registry and return its tag.

    Args:
        registry: the model registry the service reads (a folder, ``file://`` or ``s3://`` URI); a
            relative folder is made absolute.
        overrides: further serving-config ``key=value`` overrides baked into the Bento's environment
            (``LONGTAIL_SERVING_SET``), e.g. ``["unknown_scenario=refuse"]``.
        bentoml_home: the Bento store (default: ``$BENTOML_HOME``, else BentoML's default).
        project_root: the checkout (or image folder) holding ``pyproject.toml``.

    Returns:
        The Bento tag (``longtail_serving:<version>``).

    Raises:
        BentoBuildError: the wheel or the Bento could not be built (with the tools' output).
    """
    root = Path(project_root)
    if not (root / "pyproject.toml").exists():
        raise BentoBuildError(f"{root}: no pyproject.toml; build_bento needs the longtail checkout or image folder")
    if "://" not in registry:
        registry = str(Path(registry).resolve())
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    if bentoml_home is not None:
        env["BENTOML_HOME"] = str(Path(bentoml_home).resolve())
    template = yaml.safe_load((SERVING_DIR / "bentofile.yaml").read_text())
    # the Bento's version is a digest of everything it is built from: the same inputs give the same Bento
    version = source_digest(root, {"registry": registry, "overrides": list(overrides or []), "bentofile": template})
    home = Path(env.get("BENTOML_HOME") or Path.home() / "bentoml")
    name = template.get("name", "longtail_serving")
    if (home / "bentos" / name / version / "bento.yaml").exists():
        return f"{name}:{version}"
    with tempfile.TemporaryDirectory(prefix="bento-build-") as tmp:
        ctx = Path(tmp)
        # the wheel is built from a copy of the sources, so that the build writes nothing into the checkout
        src = ctx / "src"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "dist", "build")
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, src / name)
        for package in PACKAGES:
            shutil.copytree(root / package, src / package, ignore=ignore)
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
              str(ctx / "dist"), str(src)], env, "building the longtail wheel")
        wheels = sorted((ctx / "dist").glob("longtail-*.whl"))
        if not wheels:
            raise BentoBuildError(f"pip wheel wrote no longtail wheel into {ctx / 'dist'}")
        shutil.copytree(SERVING_DIR, ctx / "serving", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "dist"))
        bentofile = dict(template)
        bentofile["include"] = ["serving/*.py", "serving/*.proto"]
        python = dict(bentofile.get("python") or {})
        python["wheels"] = [f"./dist/{wheels[-1].name}"]
        bentofile["python"] = python
        envs = [e for e in bentofile.get("envs", []) if e.get("name") not in ("LONGTAIL_REGISTRY", "LONGTAIL_SERVING_SET")]
        envs.append({"name": "LONGTAIL_REGISTRY", "value": registry})
        if overrides:
            envs.append({"name": "LONGTAIL_SERVING_SET", "value": ";".join(overrides)})
        bentofile["envs"] = envs
        (ctx / "bentofile.yaml").write_text(yaml.safe_dump(bentofile, sort_keys=False))
        # BentoML resolves the wheel against the working directory: build from inside the context
        out = _run([sys.executable, "-m", "bentoml", "build", "-f", "bentofile.yaml", "--version", version, "-o", "tag",
                    "."], env, "bentoml build", cwd=ctx)
    tag = out.strip().splitlines()[-1].strip() if out.strip() else ""
    tag = tag.removeprefix("__tag__:")
    if ":" not in tag:
        raise BentoBuildError(f"bentoml build printed no tag: {out[-500:]!r}")
    return tag


def source_digest(root: Path, extra: dict) -> str:
    """A 16-hex-digit digest of the project's packaged sources (``PACKAGES``, pyproject) and ``extra``."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    files = [root / "pyproject.toml", *(p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*"))
                                        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")]
    for path in files:
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
