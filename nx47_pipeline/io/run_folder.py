"""Every artifact of an NX47 output folder, named once.

A run (``nx47 run``), an inference (``nx47 infer``) and the dashboard all read
and write the same folder.  This module is the only place the names of its
files and sub-folders are spelled (a layering test holds the rest of the code
to it); everything else asks a :class:`RunFolder` for the path::

    folder = RunFolder(out)
    write_json(folder.stats, stats)
    events = read_journal(folder.journal)

The names are a contract with other tools (README.md, docs/pipeline.md):
they never change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ARTIFACT_NAMES", "AUTO_COVERAGE", "CHUNKS", "CLASSES", "CLUSTER", "CONFIG", "CONTEXT", "CONTEXT_POSTPROCESS",
    "CONTEXT_ROUND", "CONTEXT_THRESHOLDS", "FIT", "context_round", "INFER_KEY", "JOURNAL",
    "KILLED", "LOCK",
    "MANIFEST", "MASK", "MODEL_POSTPROCESS", "MODEL_THRESHOLDS", "MODEL_WEIGHTS", "NNUNET_PLAN_LOG", "NNUNET_PREPARED",
    "NNUNET_TRAIN_LOG", "PLAN", "POSTPROCESS", "QA",
    "RESUMABLE", "RUN_KEY", "RunFolder",
    "SEARCH_RESULTS", "STATS", "STOP_REQUEST", "SUBMISSION", "TIMINGS", "UNET_POSTPROCESS", "UNET_THRESHOLDS",
]

# -- files at the top of an output folder
JOURNAL = "journal.jsonl"            #: the hash-chained event journal
PLAN = "plan.json"                   #: the plan tracker's stages, weights and ETA
STATS = "stats.json"                 #: the run's summary (status, scores, coverage)
CONFIG = "config.json"               #: the run's configuration as it started
RUN_KEY = "run_key.json"             #: what a resumed run must match
LOCK = "run.lock"                    #: held by the process running in the folder
STOP_REQUEST = "stop_request.json"   #: a page's request that the run stop
KILLED = "killed.json"               #: written by a page that had to kill the run's process
CLUSTER = "cluster.json"             #: the Dask cluster's workers, written while it runs
QA = "qa.json"                       #: the QA viewer's pass / fail marks and notes
AUTO_COVERAGE = "auto_coverage.json"  #: the coverage chosen by ``--auto-coverage``
SUBMISSION = "submission.zip"        #: the Kaggle submission
# -- nx47 infer
INFER_KEY = "infer_key.json"         #: what a resumed inference must match
CLASSES = "classes.zarr"             #: per-voxel classes (0 / 1 / 2) before post-processing
MASK = "mask.zarr"                   #: the post-processed mask
CHUNKS = "chunks"                    #: per-chunk completion marks
# -- inside sub-folders
TIMINGS = "timings.json"             #: ``preflight/``: the preflight's measured rates
MANIFEST = "model.json"              #: ``model/`` (a bundle): the manifest
MODEL_WEIGHTS = "model.npz"          #: ``model/``: the linear model's weights
FIT = "fit.json"                     #: ``model/``: how the fit converged
CONTEXT = "context.json"             #: ``model/``: the auto-context rounds (their files, how they were fitted)
CONTEXT_ROUND = "context_{}.npz"     #: ``model/``: auto-context round k's linear model (k from 1)
SEARCH_RESULTS = "results.json"      #: ``search/``: every candidate's scores and the best
POSTPROCESS = "postprocess.json"     #: ``search/``: the post-processing choice's scores (a cache)
UNET_THRESHOLDS = "unet_thresholds.json"    #: ``val/``: the U-Net's keep-or-drop and thresholds
UNET_POSTPROCESS = "unet_postprocess.json"  #: ``val/``: the U-Net's post-processing choice (a cache)
CONTEXT_THRESHOLDS = "context_thresholds.json"    #: ``val/``: the auto-context model's thresholds
CONTEXT_POSTPROCESS = "context_postprocess.json"  #: ``val/``: its post-processing choice (a cache)
MODEL_THRESHOLDS = "model_thresholds.json"    #: ``val/``: an imported (nnU-Net) model's thresholds (``--model``)
MODEL_POSTPROCESS = "model_postprocess.json"  #: ``val/``: its post-processing choice (a cache)
NNUNET_PREPARED = "prepared.json"    #: ``nnunet/``: the raw data and plans written for the run's selection
NNUNET_PLAN_LOG = "plan.log"         #: ``nnunet/``: nnU-Net's planning and preprocessing output
NNUNET_TRAIN_LOG = "train.log"       #: ``nnunet/``: nnU-Net's training output

#: Every file name above: what the layering test forbids elsewhere.
ARTIFACT_NAMES = (JOURNAL, PLAN, STATS, CONFIG, RUN_KEY, LOCK, STOP_REQUEST, KILLED, CLUSTER, QA, AUTO_COVERAGE,
                  SUBMISSION, INFER_KEY, CLASSES, MASK, TIMINGS, MANIFEST, MODEL_WEIGHTS, FIT, SEARCH_RESULTS,
                  POSTPROCESS, UNET_THRESHOLDS, UNET_POSTPROCESS, CONTEXT, CONTEXT_THRESHOLDS, CONTEXT_POSTPROCESS,
                  MODEL_THRESHOLDS, MODEL_POSTPROCESS, NNUNET_PREPARED, NNUNET_PLAN_LOG, NNUNET_TRAIN_LOG)



def context_round(k: int) -> str:
    """The file name of auto-context round ``k`` (from 1) in ``model/``."""
    return CONTEXT_ROUND.format(int(k))


# -- sub-folders of a run
PREFLIGHT_DIR = "preflight"
FEATURES_DIR = "features"
SEARCH_DIR = "search"
MODEL_DIR = "model"
VAL_DIR = "val"
TEST_DIR = "test"
UNET_DIR = "unet"  # inside model/
NNUNET_DIR = "nnunet"  # nx47 run --model-kind nnunet: nnU-Net's raw, preprocessed and results folders

#: What a run produces and a fresh (not resumed) run over the same folder replaces.
RESUMABLE = (PREFLIGHT_DIR, FEATURES_DIR, SEARCH_DIR, MODEL_DIR, VAL_DIR, TEST_DIR, SUBMISSION, AUTO_COVERAGE,
             NNUNET_DIR)


@dataclass(frozen=True)
class RunFolder:
    """The paths of one output folder's artifacts.

    Parameters
    ----------
    root : str or path-like
        The output folder (``--out``).  Nothing is created or read.
    """

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    # files at the top
    @property
    def journal(self) -> Path:
        return self.root / JOURNAL

    @property
    def plan(self) -> Path:
        return self.root / PLAN

    @property
    def stats(self) -> Path:
        return self.root / STATS

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def run_key(self) -> Path:
        return self.root / RUN_KEY

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def stop_request(self) -> Path:
        return self.root / STOP_REQUEST

    @property
    def killed(self) -> Path:
        return self.root / KILLED

    @property
    def cluster(self) -> Path:
        return self.root / CLUSTER

    @property
    def qa(self) -> Path:
        return self.root / QA

    @property
    def auto_coverage(self) -> Path:
        return self.root / AUTO_COVERAGE

    @property
    def submission(self) -> Path:
        return self.root / SUBMISSION

    @property
    def infer_key(self) -> Path:
        return self.root / INFER_KEY

    @property
    def classes(self) -> Path:
        return self.root / CLASSES

    @property
    def mask(self) -> Path:
        return self.root / MASK

    # sub-folders and what they hold
    @property
    def preflight(self) -> Path:
        return self.root / PREFLIGHT_DIR

    @property
    def timings(self) -> Path:
        return self.preflight / TIMINGS

    @property
    def features(self) -> Path:
        return self.root / FEATURES_DIR

    @property
    def search(self) -> Path:
        return self.root / SEARCH_DIR

    @property
    def model(self) -> Path:
        return self.root / MODEL_DIR

    @property
    def unet(self) -> Path:
        return self.model / UNET_DIR

    @property
    def nnunet(self) -> Path:
        return self.root / NNUNET_DIR

    @property
    def val(self) -> Path:
        return self.root / VAL_DIR

    @property
    def test(self) -> Path:
        return self.root / TEST_DIR
