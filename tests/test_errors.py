"""Every error a user fixes is one type, UserError, and carries the exit code its job gives it."""

from __future__ import annotations

import pytest

from siamim.checkpoint import CheckpointError
from siamim.data.fashion_mnist import DatasetNotFoundError
from siamim.data.folder_check import ImageTreeError
from siamim.data.parquet import ParquetDataError
from siamim.errors import UserError
from siamim.foreign import ForeignCheckpointError
from siamim.orchestration.ablation.driver import AblationFailed
from siamim.orchestration.ablation.spec import AblationInputError
from siamim.orchestration.driver.hooks import HookError
from siamim.orchestration.driver.preflight import PreflightError
from siamim.orchestration.driver.submitted import TemporaryLocationError
from siamim.orchestration.errors import LaunchError, LaunchInputError
from siamim.orchestration.runs.claims import RunClaimedError
from siamim.orchestration.runs.refs import CheckpointNotFound
from siamim.orchestration.runs.storage import StorageError
from siamim.orchestration.tracking import TrackingError
from siamim.orchestration.tracking.evaluation import RunNotFound
from siamim.orchestration.tracking.registry import RegistryError
from siamim.sections import ConfigError

BAD_INPUT = [
    ConfigError,
    PreflightError,
    StorageError,
    TrackingError,
    HookError,
    LaunchInputError,
    RunClaimedError,
    TemporaryLocationError,
    AblationInputError,
    CheckpointNotFound,
    RegistryError,
    RunNotFound,
    DatasetNotFoundError,
    ImageTreeError,
    ParquetDataError,
    CheckpointError,
    ForeignCheckpointError,
]


@pytest.mark.parametrize("cls", BAD_INPUT)
def test_bad_input_errors_are_user_errors_with_exit_2(cls):
    assert issubclass(cls, UserError) and cls("x").exit_code == 2


@pytest.mark.parametrize("cls", [LaunchError, AblationFailed])
def test_work_that_failed_exits_1(cls):
    assert issubclass(cls, UserError) and cls("x").exit_code == 1


def test_the_builtin_bases_stay_for_callers_that_catch_them():
    assert issubclass(ConfigError, ValueError) and issubclass(CheckpointNotFound, FileNotFoundError)
    assert issubclass(StorageError, RuntimeError) and issubclass(RegistryError, LookupError)
