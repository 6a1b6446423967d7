"""``nx47 kaggle-kit``: everything a Kaggle notebook with internet off needs.

``DIR/wheels/`` holds the nx47 wheel and a wheel of every runtime dependency
except torch (Kaggle images ship it), built at kit time so that packages
published only as source become wheels; ``DIR/nx47-kaggle.ipynb`` is the
dashboard notebook with a first cell that installs from the attached kit
when ``nx47_pipeline`` cannot be imported; ``DIR/README.md`` says how to use
it.  See ``docs/kaggle.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from nx47_pipeline.io.atomic import write_text
from nx47_pipeline.io.run_folder import SUBMISSION

NAME = "kaggle-kit"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Runtime dependencies left out of the kit: the Kaggle images ship them (a PyPI torchvision, pulled
#: in by nnunetv2's dependencies, would not match the image's own torch build).
LEFT_OUT = frozenset({"torch", "torchvision"})

INSTALL_CELL = '''# NX47 offline install (internet off): when nx47 is not importable, install it from the
# attached kit dataset (a folder holding wheels/nx47-*.whl), without any package index.
import glob, importlib.util, os, subprocess, sys

if importlib.util.find_spec("nx47_pipeline") is None:
    _roots = [os.environ.get("NX47_KIT_DIR", "")] + sorted(glob.glob("/kaggle/input/*")) + sorted(
        glob.glob("/kaggle/input/*/*"))
    _kits = [os.path.join(r, "wheels") for r in _roots if r and glob.glob(os.path.join(r, "wheels", "nx47-*.whl"))]
    if not _kits:
        raise RuntimeError(
            "nx47 is not installed and no NX47 kit is attached: add the kit folder built by "
            "`nx47 kaggle-kit --out DIR` as a Kaggle dataset (it holds wheels/nx47-*.whl), "
            "or set NX47_KIT_DIR to it; see the kit's README.md")
    # a kit built with --with-nnunet holds nnU-Net v2 too: nx47's nnunet extra
    _what = "nx47[nnunet]" if glob.glob(os.path.join(_kits[0], "nnunetv2-*.whl")) else "nx47"
    print(f"[nx47] installing {_what} from {_kits[0]} (no index)", flush=True)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                           "--find-links", _kits[0], _what])
    importlib.invalidate_caches()
'''


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="build the offline Kaggle kit: wheels, notebook, README",
                       description="Writes DIR/wheels (nx47 + every runtime dependency but torch, as wheels), "
                                   "DIR/nx47-kaggle.ipynb and DIR/README.md. See docs/kaggle.md.")
    p.add_argument("--out", required=True, help="kit folder to write (created)")
    p.add_argument("--python-version", default=None, metavar="X.Y",
                   help="target interpreter (default: this one, %d.%d)" % sys.version_info[:2])
    p.add_argument("--platform", dest="platform_tag", default=None, metavar="TAG",
                   help="target platform tag, e.g. manylinux2014_x86_64 (default: this machine's)")
    p.add_argument("--with-nnunet", action="store_true",
                   help="also nnU-Net v2 and its dependencies (nx47's nnunet extra, torch and torchvision "
                        "left out): nnU-Net bundles then run offline on Kaggle")


def runtime_requirements(dist: str = "nx47", *, extras: tuple[str, ...] = ()) -> list[str]:
    """nx47's runtime requirements and those of its ``extras`` (e.g. ``("nnunet",)``), less
    :data:`LEFT_OUT`."""
    out = []
    for text in metadata.requires(dist) or []:
        req = Requirement(text)
        if req.marker is not None and "extra" in str(req.marker):
            if not any(req.marker.evaluate({"extra": e}) for e in extras):
                continue
            req.marker = None  # an extra asked for: a plain requirement of the kit
        if req.name.lower() in LEFT_OUT:
            continue
        out.append(str(req))
    return out


def _torch_version() -> str:
    """The installed torch's version without its local tag (``2.13.0+cpu`` -> ``2.13.0``)."""
    try:
        return metadata.version("torch").split("+", 1)[0]
    except metadata.PackageNotFoundError:
        raise RuntimeError("--with-nnunet needs torch installed here (pip install torch==<the image's "
                           "version>): the kit pins nnU-Net's torch to it") from None


#: Distributions only a CUDA torch build needs (a guard: with torch pinned to the CPU build pip does not
#: collect them; the image's torch brings its own).
TORCH_DEPENDENCIES = ("nvidia", "triton", "cuda")


def _torch_only_dependencies(wheels: Path) -> list[Path]:
    """Wheels in ``wheels`` of a CUDA torch build's own libraries (by name: :data:`TORCH_DEPENDENCIES`)."""
    return [w for w in wheels.glob("*.whl") if w.name.lower().startswith(TORCH_DEPENDENCIES)]


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:5])} ... failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def kit_notebook(dashboard: Path) -> dict:
    """The dashboard notebook with :data:`INSTALL_CELL` first."""
    nb = json.loads(dashboard.read_text())
    cell = {"cell_type": "code", "execution_count": None, "id": "nx47-offline-install",
            "metadata": {"tags": ["nx47-install"]}, "outputs": [],
            "source": INSTALL_CELL.splitlines(keepends=True)}
    nb = copy.deepcopy(nb)
    nb["cells"].insert(0, cell)
    return nb


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def build_kit(out: str | Path, *, python_version: str | None = None, platform_tag: str | None = None,
              with_nnunet: bool = False) -> Path:
    """Write the kit to ``out`` (see the module docstring); returns ``out``.
    ``with_nnunet``: nnU-Net v2 and its dependencies too (the ``nnunet`` extra)."""
    out = Path(out)
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not (REPO_ROOT / "pyproject.toml").is_file():
        raise RuntimeError(f"{REPO_ROOT}: no pyproject.toml; build the kit from a source checkout of nx47")
    here_py = "%d.%d" % sys.version_info[:2]
    here_plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    same_target = (python_version in (None, here_py)) and (platform_tag in (None, here_plat))
    _pip("wheel", "-q", "--no-deps", "--wheel-dir", str(wheels), str(REPO_ROOT))
    reqs = runtime_requirements(extras=("nnunet",) if with_nnunet else ())
    if with_nnunet:
        # nnunetv2 requires torch: pinned to this environment's (CPU) build, or pip would resolve the
        # CUDA build and its nvidia-* libraries (gigabytes); torch's wheels are then left out
        reqs.append(f"torch=={_torch_version()}")
    if same_target:
        # pip wheel builds sdists into wheels and collects every transitive dependency
        _pip("wheel", "-q", "--wheel-dir", str(wheels), *reqs)
    else:
        _pip("download", "-q", "--only-binary=:all:", "--dest", str(wheels), "--implementation", "cp",
             "--python-version", python_version or here_py, "--platform", platform_tag or here_plat, *reqs)
    for name in LEFT_OUT:
        for w in wheels.glob(f"{name}-*.whl"):
            w.unlink()
    if with_nnunet:  # torch's own dependencies come with the image's torch
        for dep in _torch_only_dependencies(wheels):
            dep.unlink()
    nb = kit_notebook(REPO_ROOT / "dashboard.ipynb")
    write_text(out / "nx47-kaggle.ipynb", json.dumps(nb, indent=1) + "\n")
    n_wheels = len(list(wheels.glob("*.whl")))
    write_text(out / "README.md", _readme(python_version or here_py, platform_tag or here_plat,
                                          n_wheels, _size_mb(wheels)))
    return out


def _readme(py: str, plat: str, n_wheels: int, size_mb: float) -> str:
    return f"""# NX47 Kaggle kit

Built for Python {py} on `{plat}` by `nx47 kaggle-kit` ({n_wheels} wheels, {size_mb:.0f} MiB).

* `wheels/`: nx47 and every runtime dependency except torch (Kaggle images ship torch).
* `nx47-kaggle.ipynb`: the NX47 dashboard notebook; its first cell installs nx47 from this kit
  with `pip install --no-index --find-links .../wheels nx47` when nx47 is not importable.

## Use it on Kaggle (internet off)

1. Upload this folder as a Kaggle dataset (e.g. `nx47-kit`), and, for inference only, a model
   bundle written by `nx47 export-model --run RUN --out BUNDLE` as a second dataset.
2. Create a notebook from `nx47-kaggle.ipynb`; add the competition data, the kit and (optionally)
   the bundle as inputs; turn internet off.
3. Commit (Save & Run All, headless): set `MODEL_DIR = "/kaggle/input/<bundle>"` in the parameters
   cell to segment with the bundle, or leave it `None` to train within `BUDGET_S`. The run writes
   `/kaggle/working/{SUBMISSION}`.
4. Interactive: run the cells; the dashboard shows progress, heartbeat and previews live.

If the kit is not attached the first cell stops with a message saying so; if the bundle is missing
or altered, the run refuses it by file name and submits the fallback segmentation.
"""


def main(args: argparse.Namespace) -> int:
    try:
        out = build_kit(args.out, python_version=args.python_version, platform_tag=args.platform_tag,
                        with_nnunet=args.with_nnunet)
    except (RuntimeError, OSError) as exc:
        print(f"nx47 kaggle-kit: {exc}", file=sys.stderr)
        return 2
    print(f"Kaggle kit written to {out} ({_size_mb(out / 'wheels'):.0f} MiB of wheels); platform "
          f"{platform.machine()}")
    return 0
